"""The export loads three ways with the same vectors, carries its modeling code, and marks itself non-causal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from embedpipe.encoder import Encoder

TEXTS = ["Instruct: Given a question, retrieve passages\nQuery: what is a list?", "Lists are mutable sequences.",
         "x", "A somewhat longer document about dictionaries, hash tables and how keys are looked up in Python."]


def _three_way(export_dir, tmp_path) -> dict[str, np.ndarray]:
    """Load the export with AutoModel (remote code) and SentenceTransformer in a fresh interpreter that never imports
    embedpipe, so the modeling file shipped in the directory is what runs."""
    script = textwrap.dedent(
        f"""
        import json, sys, numpy as np, torch
        from transformers import AutoModel, AutoTokenizer
        from sentence_transformers import SentenceTransformer
        texts = json.loads(sys.argv[1])
        path = {str(export_dir)!r}
        model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert "embedpipe" not in sys.modules
        tok = AutoTokenizer.from_pretrained(path)
        batch = tok(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            h = model(**batch).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).float()
        auto = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
        st = SentenceTransformer(path, trust_remote_code=True, device="cpu").encode(texts)
        np.save({str(tmp_path / "auto.npy")!r}, auto)
        np.save({str(tmp_path / "st.npy")!r}, st)
        """
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", script, json.dumps(TEXTS)], check=True, env=env, cwd=tmp_path)
    return {"auto": np.load(tmp_path / "auto.npy"), "st": np.load(tmp_path / "st.npy")}


def test_export_files_and_non_causal_flag(tiny_encoder):
    names = {p.name for p in tiny_encoder.iterdir()}
    for required in ("config.json", "model.safetensors", "modeling_bidirectional_llama.py", "modules.json",
                     "embedpipe.json", "tokenizer.json", "1_Pooling", "2_Normalize"):
        assert required in names
    config = json.loads((tiny_encoder / "config.json").read_text())
    assert config["is_causal"] is False
    assert config["auto_map"]["AutoModel"] == "modeling_bidirectional_llama.LlamaBidirectionalModel"
    pooling = json.loads((tiny_encoder / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] is True


@pytest.mark.parametrize("which", ["tiny_encoder", "smollm2_encoder"])
def test_three_way_loading_parity(which, request, tmp_path):
    export_dir = request.getfixturevalue(which)
    ours = Encoder.from_pretrained(export_dir, device="cpu").encode(TEXTS)
    others = _three_way(export_dir, tmp_path)
    np.testing.assert_allclose(others["auto"], ours, atol=1e-5)
    np.testing.assert_allclose(others["st"], ours, atol=1e-5)


def test_save_load_round_trip(tiny_encoder, tmp_path):
    encoder = Encoder.from_pretrained(tiny_encoder, device="cpu")
    before = encoder.encode(TEXTS)
    again = Encoder.from_pretrained(encoder.save(tmp_path / "copy", note="round trip"), device="cpu")
    np.testing.assert_allclose(again.encode(TEXTS), before, atol=1e-6)
    assert json.loads((tmp_path / "copy" / "embedpipe.json").read_text())["note"] == "round trip"
