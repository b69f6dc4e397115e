"""`embedpipe convert` and `embedpipe encode` end to end through the CLI."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from embedpipe.cli import app
from embedpipe.encoder import Encoder

runner = CliRunner()


def test_help_explains_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "convert" in result.output and "encode" in result.output
    result = runner.invoke(app, ["convert", "--help"])
    assert "bidirectional" in result.output


def test_convert_then_encode(tiny_llama, tmp_path):
    out = tmp_path / "enc"
    result = runner.invoke(app, ["convert", str(tiny_llama), str(out), "--max-length", "32"])
    assert result.exit_code == 0, result.output
    texts = tmp_path / "texts.jsonl"
    texts.write_text("\n".join(json.dumps({"text": t}) for t in ["alpha", "beta gamma"]) + "\n")
    npy = tmp_path / "v.npy"
    result = runner.invoke(app, ["encode", str(out), str(texts), "-o", str(npy), "--instruction", "Find it"])
    assert result.exit_code == 0, result.output
    vectors = np.load(npy)
    expected = Encoder.from_pretrained(out, device="cpu").encode_queries(["alpha", "beta gamma"], "Find it")
    np.testing.assert_allclose(vectors, expected, atol=1e-6)


def test_encode_names_the_bad_line(tiny_encoder, tmp_path):
    texts = tmp_path / "texts.jsonl"
    texts.write_text('{"text": "ok"}\n{"txt": "wrong field"}\n')
    result = runner.invoke(app, ["encode", str(tiny_encoder), str(texts)])
    assert result.exit_code != 0
    assert "texts.jsonl:2: field 'text'" in str(result.exception)
