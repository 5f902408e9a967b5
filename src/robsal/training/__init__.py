"""robsal.training"""
