"""Checkpoint averaging: exactness, weights, sharding, refusal of mismatched checkpoints, provenance."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from embedpipe.encoder import Encoder, NotAnEncoderExport
from embedpipe.merging.merge import MergeError, content_hash, merge_checkpoints


def load_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def variant(src: Path, dst: Path, seed: int | None = None, edit=None) -> Path:
    """A copy of an export, its weights perturbed by seeded noise and/or edited by ``edit(state) -> state``."""
    shutil.copytree(src, dst)
    state = load_weights(dst)
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
        state = {k: v + 0.01 * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in state.items()}
    if edit is not None:
        state = edit(state)
    for f in dst.glob("*.safetensors"):
        f.unlink()
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.fixture()
def pair(tiny_encoder, tmp_path):
    return variant(tiny_encoder, tmp_path / "a", seed=1), variant(tiny_encoder, tmp_path / "b", seed=2)


def test_merge_of_identical_checkpoints_is_the_checkpoint(tiny_encoder, tmp_path):
    copies = [variant(tiny_encoder, tmp_path / f"c{i}") for i in range(3)]
    summary = merge_checkpoints(copies, tmp_path / "merged")
    original, merged = load_weights(tiny_encoder), load_weights(tmp_path / "merged")
    assert original.keys() == merged.keys()
    for name, value in original.items():
        assert merged[name].dtype == value.dtype
        assert torch.equal(merged[name], value), name
    assert summary["method"] == "uniform"
    assert [x["weight"] for x in summary["inputs"]] == pytest.approx([1 / 3] * 3)


def test_merge_of_two_is_their_mean_and_weights_are_respected(pair, tmp_path):
    a, b = pair
    wa, wb = load_weights(a), load_weights(b)
    merge_checkpoints([a, b], tmp_path / "mean")
    mean = load_weights(tmp_path / "mean")
    for name in wa:
        expected = ((wa[name].double() + wb[name].double()) / 2).float()
        assert torch.equal(mean[name], expected), name
        assert not torch.equal(mean[name], wa[name])
    summary = merge_checkpoints([a, b], tmp_path / "weighted", weights=[3, 1])
    weighted = load_weights(tmp_path / "weighted")
    for name in wa:
        expected = (0.75 * wa[name].double() + 0.25 * wb[name].double()).float()
        assert torch.equal(weighted[name], expected), name
    assert [x["weight"] for x in summary["inputs"]] == [0.75, 0.25]
    assert [x["weight_given"] for x in summary["inputs"]] == [3.0, 1.0]


def test_sharded_output_loads_and_encodes_like_the_single_file(pair, tmp_path):
    a, b = pair
    single = merge_checkpoints([a, b], tmp_path / "single")
    sharded = merge_checkpoints([a, b], tmp_path / "sharded", shard_size="2MB")
    assert single["shards"] == ["model.safetensors"]
    assert len(sharded["shards"]) > 1
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(sharded["shards"])
    assert index["metadata"]["total_size"] == sharded["total_size"]
    texts = ["merging checkpoints", "Instruct: x\nQuery: a question"]
    one = Encoder.from_pretrained(tmp_path / "single", device="cpu").encode(texts)
    many = Encoder.from_pretrained(tmp_path / "sharded", device="cpu").encode(texts)
    np.testing.assert_array_equal(one, many)
    # the other export files are there: sentence-transformers modules, tokenizer, modeling code
    for name in ("modules.json", "1_Pooling", "tokenizer.json", "modeling_bidirectional_llama.py", "embedpipe.json"):
        assert (tmp_path / "sharded" / name).exists(), name
    # merging into an existing folder replaces its old shards
    merge_checkpoints([a, b], tmp_path / "sharded")
    assert sorted(p.name for p in (tmp_path / "sharded").glob("*.safetensors")) == ["model.safetensors"]


def test_provenance_names_inputs_by_content_hash(pair, tmp_path):
    a, b = pair
    summary = merge_checkpoints([a, b], tmp_path / "m", weights=[1, 1])
    saved = json.loads((tmp_path / "m" / "merge_provenance.json").read_text())
    assert saved["inputs"][0]["sha256"] == content_hash(a) != content_hash(b) == saved["inputs"][1]["sha256"]
    assert saved["output_sha256"] == content_hash(tmp_path / "m")
    assert summary["method"] == "weighted"
    meta = json.loads((tmp_path / "m" / "embedpipe.json").read_text())
    assert [x["sha256"] for x in meta["merged_from"]] == [content_hash(a), content_hash(b)]


def test_provenance_logged_to_the_active_mlflow_run(pair, tmp_path):
    import mlflow

    a, b = pair
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        mlflow.set_experiment("merge-test")
        with mlflow.start_run() as run:
            merge_checkpoints([a, b], tmp_path / "m")
        data = mlflow.get_run(run.info.run_id).data
        assert data.params["merge.n_models"] == "2"
        assert data.tags["merge.input.0.sha256"] == content_hash(a)
        artifacts = [f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, "merge")]
        assert artifacts == ["merge/merge_provenance.json"]
    finally:
        mlflow.set_tracking_uri("")


def _drop(name):
    return lambda state: {k: v for k, v in state.items() if k != name}


def _reshape(name):
    return lambda state: {**state, name: state[name][:-1].clone()}


def _half(name):
    return lambda state: {**state, name: state[name].half()}


@pytest.mark.parametrize(
    "edit, message",
    [
        (_drop("layers.1.mlp.up_proj.weight"), "tensor 'layers.1.mlp.up_proj.weight' is in"),
        (_reshape("layers.0.self_attn.q_proj.weight"), "shape differs for tensor 'layers.0.self_attn.q_proj.weight'"),
        (_half("norm.weight"), "dtype differs for tensor 'norm.weight': F32"),
    ],
)
def test_mismatched_checkpoints_are_refused_naming_the_tensor(tiny_encoder, tmp_path, edit, message):
    bad = variant(tiny_encoder, tmp_path / "bad", edit=edit)
    with pytest.raises(MergeError, match=message.replace("(", r"\(").replace(".", r"\.")):
        merge_checkpoints([tiny_encoder, bad], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_different_architecture_is_refused(tiny_encoder, tmp_path):
    other = variant(tiny_encoder, tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    config["rope_theta"] = 12345.0
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(MergeError, match="config key 'rope_theta'"):
        merge_checkpoints([tiny_encoder, other], tmp_path / "out")


def test_bad_inputs(tiny_encoder, tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(NotAnEncoderExport, match="plain"):
        merge_checkpoints([tiny_encoder, tmp_path / "plain"], tmp_path / "out")
    with pytest.raises(MergeError, match="3 weights given for 2"):
        merge_checkpoints([tiny_encoder, tiny_encoder], tmp_path / "out", weights=[1, 1, 1])
    with pytest.raises(MergeError, match="non-negative"):
        merge_checkpoints([tiny_encoder, tiny_encoder], tmp_path / "out", weights=[1, -1])
    with pytest.raises(MergeError, match="one of the inputs"):
        merge_checkpoints([tiny_encoder, tiny_encoder], tiny_encoder)
    with pytest.raises(MergeError, match="no checkpoints"):
        merge_checkpoints([], tmp_path / "out")


def test_merge_command(pair, tmp_path):
    from typer.testing import CliRunner

    from embedpipe.cli import app

    a, b = pair
    result = CliRunner().invoke(app, ["merge", str(a), str(b), "--out", str(tmp_path / "m"), "-w", "1", "-w", "3"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["method"] == "weighted"
    wa, wb, merged = load_weights(a), load_weights(b), load_weights(tmp_path / "m")
    expected = (0.25 * wa["norm.weight"].double() + 0.75 * wb["norm.weight"].double()).float()
    assert torch.equal(merged["norm.weight"], expected)
    bad = CliRunner().invoke(app, ["merge", str(a), str(tmp_path), "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "not an embedpipe encoder export" in str(bad.exception)


def test_chunked_averaging_is_exact(pair, tmp_path, monkeypatch):
    import embedpipe.merging.merge as merge_module

    a, b = pair
    monkeypatch.setattr(merge_module, "CHUNK_ELEMENTS", 1000)  # many row chunks per tensor
    merge_checkpoints([a, b], tmp_path / "chunked")
    wa, wb, merged = load_weights(a), load_weights(b), load_weights(tmp_path / "chunked")
    for name in wa:
        assert torch.equal(merged[name], ((wa[name].double() + wb[name].double()) / 2).float()), name


def test_a_merge_failing_midway_leaves_no_shards_and_stops_hashing(pair, tmp_path, monkeypatch):
    import embedpipe.merging.merge as merge_module

    a, b = pair
    real, calls = merge_module._average_tensor, {"n": 0}

    def fails_late(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 20:
            raise OSError("disk read error")
        return real(*args, **kwargs)

    hashed: list[Path] = []
    monkeypatch.setattr(merge_module, "_average_tensor", fails_late)
    monkeypatch.setattr(merge_module, "content_hash", lambda d: hashed.append(Path(d)) or "x")
    with pytest.raises(OSError, match="disk read error"):
        merge_checkpoints([a, b, a], tmp_path / "out", shard_size="1KB")  # a shard per tensor
    assert calls["n"] == 20
    assert not list((tmp_path / "out").glob("*.safetensors")) and not list((tmp_path / "out").glob(".shard-*"))
    assert len(hashed) <= 3
    # a failure after the shards got their final names (here: hashing an input) removes them too
    monkeypatch.setattr(merge_module, "_average_tensor", real)
    monkeypatch.setattr(merge_module, "content_hash", lambda d: (_ for _ in ()).throw(OSError("hash failed")))
    with pytest.raises(OSError, match="hash failed"):
        merge_checkpoints([a, b], tmp_path / "out2", shard_size="1KB")
    assert not list((tmp_path / "out2").glob("*.safetensors")) and not (tmp_path / "out2" / "model.safetensors.index.json").exists()
