"""embedpipe.merging"""
