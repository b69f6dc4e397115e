"""Local OpenAI-compatible embedding server (``embedpipe serve``); heavy imports stay in the submodules."""
