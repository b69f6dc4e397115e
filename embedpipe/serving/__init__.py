"""embedpipe.serving"""
