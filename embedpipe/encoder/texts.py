"""Reading texts for ``embedpipe encode``: one per line, or JSONL with a ``text`` field."""

from __future__ import annotations

import json
from pathlib import Path


def read_texts(path: str | Path) -> list[str]:
    """Read texts; errors name the file, the line and the field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file {path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 ({err})") from None
    texts: list[str] = []
    jsonl = path.suffix == ".jsonl"
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            if jsonl:
                continue
            raise ValueError(f"{path}:{number}: empty line (an empty text cannot be encoded)")
        if not jsonl:
            texts.append(line)
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: invalid JSON ({err.msg})") from None
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path}:{number}: field 'text' is missing, empty or not a string")
        texts.append(text)
    if not texts:
        raise ValueError(f"{path}: no texts")
    return texts
