"""robsal.data"""
