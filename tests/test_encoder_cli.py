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


def test_convert_a_gguf_file_by_its_path(smollm2_encoder, tmp_path):
    """Any Llama-family .gguf file converts (here the packaged SmolLM2 GGUF, given by its path, not the alias), and
    embeds exactly like the alias's conversion of the same file."""
    from embedpipe.encoder.convert import cache_dir, smollm2_gguf_path

    out = tmp_path / "from-gguf"
    result = runner.invoke(app, ["convert", str(smollm2_gguf_path()), str(out), "--max-length", "64"])
    assert result.exit_code == 0, result.output
    assert list((cache_dir() / "gguf").glob("SmolLM2-135M-Instruct.Q4_1-*/model.safetensors"))  # dequantised once
    texts = ["how do I open a file", "list comprehensions build lists"]
    ours = Encoder.from_pretrained(out, device="cpu").encode(texts)
    alias = Encoder.from_pretrained(smollm2_encoder, device="cpu").encode(texts)
    np.testing.assert_allclose(ours, alias, atol=1e-5)


def test_convert_refuses_a_file_that_is_not_gguf(tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"not a model")
    result = runner.invoke(app, ["convert", str(bad), str(tmp_path / "out")])
    assert result.exit_code != 0 and "not a .gguf file" in str(result.exception or result.output)
