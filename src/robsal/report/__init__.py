"""robsal.report"""
