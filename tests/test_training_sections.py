"""Training does each thing once: it loads, pads and embeds through the encoder (Encoder.from_pretrained, _pad,
embed), reads remote paths through storage, runs its loop on its own config section (no Recipe), and the
``embedpipe train`` command loads the recipe once."""

from __future__ import annotations

import inspect

import pytest

from embedpipe.data.schema import read_records
from embedpipe.encoder.encoder import Encoder
from embedpipe.recipe import load_recipe
from embedpipe.training import run
from tests.test_training_run import RECIPE, SMALL, records, same_weights  # noqa: F401 (fixture)


def test_the_loop_takes_the_training_section_and_goes_through_the_encoder(tiny_encoder, records, tmp_path,
                                                                           monkeypatch):
    recipe = load_recipe(RECIPE, [*SMALL, "training.stage1.steps=2"])
    loaded, padded, embedded = [], [], []
    for name, calls in (("from_pretrained", loaded), ("_pad", padded), ("embed", embedded)):
        original = inspect.getattr_static(Encoder, name)
        if isinstance(original, classmethod):
            def spy(cls, *a, _f=original.__func__, _calls=calls, **k):
                _calls.append(a[0])
                return _f(cls, *a, **k)
            monkeypatch.setattr(Encoder, name, classmethod(spy))
        else:
            def spy(self, *a, _f=original, _calls=calls, **k):
                _calls.append(self)
                return _f(self, *a, **k)
            monkeypatch.setattr(Encoder, name, spy)

    section = recipe.training  # the training section alone, and records the data area selected
    stage_cfg = run.resolve_stage(section, "stage1", None)
    selected = run.load_stage_records(recipe.data, section, "stage1", records, stage_cfg)
    summary = run.train_records(section, "stage1", stage_cfg, selected, str(tiny_encoder), tmp_path / "a",
                                source=str(records))
    assert summary["steps"] == 2 and summary["records"] == len(selected)
    assert [str(p) for p in loaded] == [str(tiny_encoder)]  # the export was loaded by Encoder.from_pretrained
    assert padded and embedded and all(e is padded[0] for e in embedded)  # one training encoder, its pad and embed
    # the recipe-level entry is the same loop: same weights
    run.train_stage(recipe, "stage1", records, str(tiny_encoder), tmp_path / "b")
    assert same_weights(tmp_path / "a", tmp_path / "b")
    assert "recipe" not in inspect.signature(run.train_records).parameters


def test_training_has_no_private_remote_path_handling():
    import embedpipe.training as package
    from pathlib import Path

    for path in Path(package.__file__).parent.rglob("*.py"):
        code = "\n".join(line.split("#")[0] for line in path.read_text().splitlines())
        assert '"://"' not in code and "'://'" not in code, f"{path}: remote paths go through embedpipe.storage"
    from embedpipe.training import data

    assert not hasattr(run, "load_init_model") and not hasattr(data, "pad")  # the encoder's load and pad instead


def test_cli_train_loads_the_recipe_once(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import embedpipe.recipe
    import embedpipe.training.launch as launch
    from embedpipe.cli import app

    loads, runs = [], []
    real = embedpipe.recipe.load_recipe
    monkeypatch.setattr(embedpipe.recipe, "load_recipe", lambda *a, **k: loads.append(a) or real(*a, **k))
    monkeypatch.setattr(launch, "load_launch_recipe", lambda args: pytest.fail("the recipe was loaded twice"))
    monkeypatch.setattr(launch, "run", lambda recipe, *a, **k: runs.append((recipe, a, k)) or {})
    result = CliRunner().invoke(app, ["train", "stage2", "--records", "r.jsonl", "--init-model", "m", "--out",
                                      str(tmp_path / "o"), "--recipe", str(RECIPE), "--set",
                                      "training.stage2.steps=3"])
    assert result.exit_code == 0, result.output
    assert len(loads) == 1 and len(runs) == 1
    recipe, args, kwargs = runs[0]
    assert recipe.training.stage2.steps == 3 and args[0] == "stage2"
