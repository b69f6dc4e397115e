"""embedpipe: train instruction-aware text embedding models with the llama-embed-nemotron-8b recipe."""

__version__ = "0.1.0"
