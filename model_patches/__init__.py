"""model_patches"""
