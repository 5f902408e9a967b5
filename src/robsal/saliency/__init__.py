"""robsal.saliency"""
