"""robsal.experiments"""
