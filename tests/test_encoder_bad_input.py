"""Bad input to the encoder and converter gets a clear error that names the thing."""

from __future__ import annotations

import logging

import pytest

from embedpipe.encoder import Encoder, NotAnEncoderExport
from embedpipe.encoder.convert import convert_checkpoint, resolve_source, smollm2_gguf_path


@pytest.fixture(scope="module")
def tiny(tiny_encoder):
    return Encoder.from_pretrained(tiny_encoder, device="cpu")


def test_empty_and_non_string_texts(tiny):
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        tiny.encode(["fine", "   "])
    with pytest.raises(TypeError, match=r"texts\[2\] is int"):
        tiny.encode(["a", "b", 3])
    with pytest.raises(TypeError, match="single string"):
        tiny.encode("not a list")
    with pytest.raises(ValueError, match=r"queries\[0\] is empty"):
        tiny.encode_queries([""], "task")


def test_missing_model_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Encoder.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_checkpoint(tmp_path / "nowhere", tmp_path / "out")


def test_directory_that_is_not_an_export(tmp_path, tiny_llama):
    with pytest.raises(NotAnEncoderExport, match="not an embedpipe encoder export"):
        Encoder.from_pretrained(tiny_llama)


def test_non_llama_checkpoint_is_refused(minilm_path, tmp_path):
    with pytest.raises(ValueError, match="'bert' checkpoint; only Llama-family"):
        convert_checkpoint(minilm_path, tmp_path / "out")


def test_unreadable_gguf(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(ValueError, match="cannot read the model config of .*broken.gguf"):
        convert_checkpoint(bad, tmp_path / "out")
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="not a .gguf file"):
        convert_checkpoint(other, tmp_path / "out")


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        convert_checkpoint(tmp_path / "empty", tmp_path / "out")


def test_packaged_gguf_resolves():
    """A .gguf path resolves to its dequantised checkpoint folder (cached: the second call does no work)."""
    folder, name = resolve_source(smollm2_gguf_path())
    assert name is None and (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert resolve_source(smollm2_gguf_path()) == (folder, None)


def test_over_long_texts_are_truncated_and_counted(tiny, caplog):
    long_text = "word " * 500
    with caplog.at_level(logging.WARNING):
        vectors = tiny.encode([long_text, "short", long_text], max_length=16)
    assert vectors.shape[0] == 3
    assert "2 of 3 texts were longer than 16 tokens" in caplog.text


def test_corrupt_export_marker(tmp_path):
    (tmp_path / "embedpipe.json").write_text("{not json")
    with pytest.raises(NotAnEncoderExport, match="invalid JSON"):
        Encoder.from_pretrained(tmp_path)
