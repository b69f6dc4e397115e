"""embedpipe.deploy"""
