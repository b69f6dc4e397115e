"""embedpipe.training"""
