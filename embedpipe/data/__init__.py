"""embedpipe.data"""
