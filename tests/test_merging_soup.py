"""Greedy soup: keeps a checkpoint only when the dev score of the average improves; real evaluation as the scorer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from embedpipe.merging.config import MergeConfig
from embedpipe.merging.soup import evaluation_scorer, greedy_soup, merge_with_config


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def shifted(src: Path, dst: Path, shift: float) -> Path:
    shutil.copytree(src, dst)
    state = {k: v + shift for k, v in weights(dst).items()}
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def noisy(src: Path, dst: Path, seed: int) -> Path:
    shutil.copytree(src, dst)
    gen = torch.Generator().manual_seed(seed)
    state = {k: v + 0.02 * torch.randn(v.shape, generator=gen) for k, v in weights(dst).items()}
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.fixture()
def checkpoints(tiny_encoder, tmp_path):
    # the norm weights of a, b, c are offset by +0.1, -0.1 and +3: the target (offset 0) is the mean of a and b
    return [shifted(tiny_encoder, tmp_path / name, s) for name, s in (("a", 0.1), ("b", -0.1), ("c", 3.0))]


def test_greedy_soup_keeps_only_improving_checkpoints(tiny_encoder, checkpoints, tmp_path):
    target = weights(tiny_encoder)["norm.weight"]
    calls = []

    def score(model_dir: Path) -> float:
        calls.append(model_dir)
        return -float((weights(model_dir)["norm.weight"] - target).abs().mean())

    summary = greedy_soup(checkpoints, tmp_path / "soup", score, work_dir=tmp_path)
    a, b, c = (str(p) for p in checkpoints)
    assert summary["ingredients"] in ([a, b], [b, a])
    assert [h["accepted"] for h in summary["history"]] == [True, True, False]
    assert summary["history"][2]["candidate"] == c
    assert summary["score"] == pytest.approx(0.0, abs=1e-6)
    assert len(calls) == 3 + 2  # each checkpoint alone, then two trial averages
    merged = weights(tmp_path / "soup")["norm.weight"]
    torch.testing.assert_close(merged, target, atol=1e-6, rtol=0)
    assert summary["method"] == "greedy_soup" and len(summary["inputs"]) == 2
    assert not list(tmp_path.glob("soup-*"))  # trial merges are cleaned up


def test_greedy_soup_keeps_ties(checkpoints, tmp_path):
    """Algorithm 1 of the model-soups paper keeps a candidate when the soup scores at least as well (>=): with a
    constant score every checkpoint joins the soup."""
    summary = greedy_soup(checkpoints, tmp_path / "soup", lambda _: 0.5, work_dir=tmp_path)
    assert [h["accepted"] for h in summary["history"]] == [True, True, True]
    assert sorted(summary["ingredients"]) == sorted(str(p) for p in checkpoints)


def test_soup_scorer_never_sees_test_tasks(tiny_encoder, tmp_path):
    """The soup's scorer evaluates the dev role: a folder with only test tasks (no dev split) is refused, by name."""
    from embedpipe.evaluation.config import EvaluationConfig

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "sts.jsonl").write_text("".join(json.dumps({"sentence1": f"a {i} b", "sentence2": f"a {i} c",
                                                         "score": float(i)}) + "\n" for i in range(4)))
    (tasks / "tasks.json").write_text(json.dumps([{"name": "TestOnlySTS", "type": "sts", "path": "sts.jsonl"}]))
    scorer = evaluation_scorer(EvaluationConfig(batch_size=8), tasks, tmp_path, cache_dir=tmp_path / "emb")
    with pytest.raises(ValueError, match="no dev tasks"):
        scorer(tiny_encoder)


def test_merge_with_config_dispatches(checkpoints, tmp_path):
    summary = merge_with_config(MergeConfig(method="weighted", weights=[1, 0, 0]), checkpoints, tmp_path / "w")
    assert torch.equal(weights(tmp_path / "w")["norm.weight"], weights(checkpoints[0])["norm.weight"])
    assert summary["method"] == "weighted"
    with pytest.raises(ValueError, match="needs a dev score"):
        merge_with_config(MergeConfig(method="greedy_soup"), checkpoints, tmp_path / "g")
    with pytest.raises(ValueError, match="needs merge.weights"):
        merge_with_config(MergeConfig(method="weighted"), checkpoints, tmp_path / "g")


def test_greedy_soup_with_the_evaluation_as_dev_score(tiny_encoder, tmp_path):
    """The scorer runs mteb on a local STS task (Mean(Task) of the real evaluation)."""
    from embedpipe.evaluation.config import EvaluationConfig

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    pairs = [("A cat sits on the mat.", "A cat is sitting on a mat.", 4.8), ("Dogs bark loudly.", "Stock prices fell.", 0.1),
             ("He plays guitar.", "A man is playing a guitar.", 4.5), ("The sun is hot.", "It snows in winter.", 1.0),
             ("She reads a novel.", "A woman is reading a book.", 4.2), ("Rain falls.", "The car is red.", 0.3)]
    (tasks / "sts.jsonl").write_text("".join(json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n"
                                             for a, b, s in pairs))
    (tasks / "tasks.json").write_text(json.dumps([{"name": "DevSTS", "type": "sts", "path": "sts.jsonl",
                                                     "dev_split": "dev"}]))
    scorer = evaluation_scorer(EvaluationConfig(batch_size=8), tasks, tmp_path, cache_dir=tmp_path / "emb")
    checkpoints = [noisy(tiny_encoder, tmp_path / f"n{i}", seed=i) for i in range(2)]
    summary = greedy_soup(checkpoints, tmp_path / "soup", scorer, work_dir=tmp_path)
    assert set(summary["individual_scores"]) == {str(p) for p in checkpoints}
    assert all(-1.0 <= s <= 1.0 for s in summary["individual_scores"].values()), summary["individual_scores"]
    assert len(summary["history"]) == 2
    assert summary["score"] == max(h["score"] for h in summary["history"])
    assert (tmp_path / "soup" / "merge_provenance.json").is_file()
