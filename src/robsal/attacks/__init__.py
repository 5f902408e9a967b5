"""robsal.attacks"""
