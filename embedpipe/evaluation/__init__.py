"""embedpipe.evaluation"""
