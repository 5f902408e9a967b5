"""robsal.metrics"""
