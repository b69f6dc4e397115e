"""embedpipe.mining"""
