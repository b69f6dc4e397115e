"""train_stage end to end on a tiny random Llama: two stages, exact resume after a kill, two gloo processes,
FSDP2 / DeepSpeed checkpoints consolidated on CPU, MLflow logging, gradient flow, and bad input refused early."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from embedpipe.data.schema import RecordError, write_records
from embedpipe.recipe import load_recipe
from embedpipe.training.config import StageConfig
from embedpipe.training.data import TrainingDataError
from embedpipe.training.run import TrainingConfigError, plan_batches, train_stage

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "local.yaml"
SMALL = ["training.stage1.batch_size=4", "training.stage1.steps=4", "training.stage1.warmup_steps=1",
         "training.stage1.max_document_length=48", "training.stage2.batch_size=4", "training.stage2.steps=2",
         "training.stage2.max_document_length=48", "training.stage1.learning_rate=1e-3",
         "training.stage2.learning_rate=1e-3",
         "training.precision=fp32"]  # exact comparisons across backends and resumes: no bf16 autocast


def make_records(n: int = 16, negatives: int = 4) -> list[dict]:
    from pydoc_data.topics import topics

    names = sorted(topics)[:n + negatives]
    out = []
    for i in range(n):
        out.append({"id": f"pydoc-{i}", "task_type": "retrieval", "source": "pydoc",
                    "instruction": "Given a question about Python, retrieve the documentation section that answers it",
                    "query": f"How does {names[i]} work?", "positives": [topics[names[i]][:200]],
                    "negatives": [topics[names[i + j + 1]][:200] for j in range(negatives)]})
    out[-1]["task_type"] = "sts"  # a symmetric record in the mix
    return out


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("records") / "records.jsonl"
    write_records(make_records(), path)
    return path


@pytest.fixture(scope="module")
def stage1_run(tiny_encoder, records, tmp_path_factory) -> tuple[dict, Path]:
    """Stage 1 of the SMALL recipe, plain torch in this process: the reference the other backends must match."""
    out = tmp_path_factory.mktemp("stage1") / "export"
    return train_stage(load_recipe(RECIPE, SMALL), "stage1", records, tiny_encoder, out), out


def weights(export: Path) -> dict[str, torch.Tensor]:
    return load_file(str(export / "model.safetensors"))


def same_weights(a: Path, b: Path, atol: float = 0.0) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=atol, rtol=0) for k in wa)


def launch(args: list[str], env_extra: dict | None = None, nproc: int = 1, timeout: int = 240):
    """Run the launcher (or torchrun over it) in its own process group: a hung run is killed whole, workers too."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "embedpipe.training.launch"] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
         "-m", "embedpipe.training.launch"]
    return run_group(cmd + args, env, timeout)


def run_group(cmd: list[str], env: dict, timeout: int) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def launch_args(records, init, out, *sets, checkpoint=None, summary=None):
    args = ["--recipe", str(RECIPE), "--stage", "stage1", "--records", str(records), "--init-model", str(init),
            "--out", str(out)]
    for item in [*SMALL, *sets]:
        args += ["--set", item]
    if checkpoint:
        args += ["--checkpoint-dir", str(checkpoint)]
    if summary:
        args += ["--summary", str(summary)]
    return args


def test_two_stage_hand_over(tiny_encoder, records, stage1_run, tmp_path):
    from embedpipe.encoder import Encoder, read_export_metadata

    recipe = load_recipe(RECIPE, SMALL)
    s1, stage1 = stage1_run
    s2 = train_stage(recipe, "stage2", records, stage1, tmp_path / "stage2",
                     variant={"name": "mix-b", "learning_rate": 5e-4})
    assert (s1["hard_negatives"], s2["hard_negatives"]) == (1, 4)
    assert (s1["loss"], s2["loss"]) == ("in_batch", "hard_negative_infonce")  # local.yaml: stage 1's own loss
    assert s2["init_model"] == str(stage1) and s2["stage_name"] == "stage2-mix-b"
    assert len(s1["history"]) == 4 and len(s2["history"]) == 2
    assert s2["history"][0]["lr"] == 0.0  # one warm-up step
    assert s2["history"][1]["lr"] == pytest.approx(5e-4)  # the variant's peak, not the stage's 1e-3
    meta = read_export_metadata(tmp_path / "stage2")
    assert meta["training"]["stage"] == "stage2" and meta["max_length"] == 48
    assert not same_weights(tiny_encoder, stage1) and not same_weights(stage1, tmp_path / "stage2")
    emb = Encoder.from_pretrained(tmp_path / "stage2", device="cpu").encode(["a question", "a passage"])
    assert emb.shape == (2, 64)


def test_training_lowers_the_loss_on_a_fixed_batch(tiny_encoder, records, tmp_path):
    recipe = load_recipe(RECIPE, SMALL + ["training.stage1.batch_size=16", "training.stage1.steps=6",
                                          "training.stage1.warmup_steps=0", "training.stage1.schedule=constant"])
    summary = train_stage(recipe, "stage1", records, tiny_encoder, tmp_path / "out")
    losses = [h["loss"] for h in summary["history"]]  # batch 16 = all records: the same batch every step
    assert losses[-1] < losses[0] * 0.7


def test_resume_after_kill_ends_with_identical_weights(tiny_encoder, records, tmp_path):
    sets = ["training.stage1.steps=5", "training.stage1.checkpoint_every=2", "training.stage1.micro_batch_size=2"]
    # the uninterrupted reference, in this process (same thread count as the launched one: bit-identical maths)
    train_stage(load_recipe(RECIPE, SMALL + sets), "stage1", records, tiny_encoder, tmp_path / "ref")
    ckpt = tmp_path / "ckpt"
    killed = launch(launch_args(records, tiny_encoder, tmp_path / "run", *sets, checkpoint=ckpt),
                    env_extra={"EMBEDPIPE_FAULT_AFTER_STEP": "4"})
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL right after step 4's checkpoint
    assert not (tmp_path / "run").exists()
    assert json.loads((ckpt / "latest.json").read_text())["step"] == 4
    resumed = launch(launch_args(records, tiny_encoder, tmp_path / "run", *sets, checkpoint=ckpt,
                                 summary=tmp_path / "summary.json"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["start_step"] == 4 and summary["resumed_from"] == "step-00000004"
    assert len(summary["history"]) == 1
    assert same_weights(tmp_path / "ref", tmp_path / "run")  # bit-identical


@pytest.mark.slow
def test_two_gloo_processes_stay_in_sync_and_match_one_process(tiny_encoder, records, stage1_run, tmp_path):
    run = launch(launch_args(records, tiny_encoder, tmp_path / "ddp", summary=tmp_path / "s.json"), nproc=2)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["world_size"] == 2 and summary["micro_batch_size"] == 2
    checks = summary["replica_checksums"]
    assert len(checks) == 2 and checks[0] == checks[1]
    # one process over the whole batch computes the same global-mean gradient (up to float rounding)
    single, single_out = stage1_run
    assert [round(h["loss"], 4) for h in single["history"]] == [round(h["loss"], 4) for h in summary["history"]]
    assert same_weights(tmp_path / "ddp", single_out, atol=1e-5)


@pytest.mark.slow
def test_fsdp2_two_processes_checkpoint_consolidates_on_cpu(tiny_encoder, records, stage1_run, tmp_path):
    from embedpipe.training.consolidate import consolidate

    sets = ["training.backend=fsdp", "training.stage1.checkpoint_every=2"]
    run = launch(launch_args(records, tiny_encoder, tmp_path / "fsdp", *sets, checkpoint=tmp_path / "ck",
                             summary=tmp_path / "s.json"), nproc=2)
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "ck" / "step-00000002" / "dcp").glob("*.distcp")) == \
        ["__0_0.distcp", "__1_0.distcp"]
    torch_run, plain = stage1_run
    fsdp = json.loads((tmp_path / "s.json").read_text())
    assert [round(h["loss"], 4) for h in fsdp["history"]] == [round(h["loss"], 4) for h in torch_run["history"]]
    assert same_weights(tmp_path / "fsdp", plain, atol=1e-5)
    out = consolidate(tmp_path / "ck" / "step-00000002", tiny_encoder, tmp_path / "consolidated", max_length=48)
    assert (out / "embedpipe.json").is_file() and weights(out).keys() == weights(plain).keys()


DEEPSPEED_NO_SHM = (  # DeepSpeed's CPU accelerator JIT-compiles a shared-memory collective (minutes on 2 cores):
    "import deepspeed.comm.torch as t; t.build_shm_op = lambda: None; "  # use plain gloo collectives instead
    "import sys; from embedpipe.training.launch import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.mark.slow
def test_deepspeed_zero3_trains_and_its_checkpoint_consolidates(tiny_encoder, records, stage1_run, tmp_path):
    from embedpipe.training.consolidate import checkpoint_state_dict

    sets = ["training.backend=deepspeed", "training.deepspeed_config=configs/deepspeed/zero3.json",
            "training.stage1.checkpoint_every=2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = run_group([sys.executable, "-c", DEEPSPEED_NO_SHM] + launch_args(
        records, tiny_encoder, tmp_path / "ds", *sets, checkpoint=tmp_path / "ck", summary=tmp_path / "s.json"),
        env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ds = json.loads((tmp_path / "s.json").read_text())
    torch_run, plain = stage1_run
    assert [round(h["loss"], 4) for h in ds["history"]] == [round(h["loss"], 4) for h in torch_run["history"]]
    assert same_weights(tmp_path / "ds", plain, atol=1e-5)
    assert set(checkpoint_state_dict(tmp_path / "ck" / "step-00000002")) == set(weights(plain))


def test_mlflow_logs_to_the_active_run_only(tiny_encoder, records, tmp_path):
    import mlflow

    recipe = load_recipe(RECIPE, SMALL + ["training.stage1.steps=2"])
    train_stage(recipe, "stage1", records, tiny_encoder, tmp_path / "untracked")  # no active run: no error
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        with mlflow.start_run() as run:
            train_stage(recipe, "stage1", records, tiny_encoder, tmp_path / "tracked")
        client = mlflow.MlflowClient()
        data = client.get_run(run.info.run_id).data
        assert data.params["training.loss"] == "hard_negative_infonce" and data.params["train.stage1.steps"] == "2"
        for name in ("loss", "lr", "grad_norm", "tokens_per_s"):
            assert len(client.get_metric_history(run.info.run_id, f"stage1.{name}")) == 2, name
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "model-stage1")]
        assert "model-stage1/embedpipe.json" in artifacts and "model-stage1/model.safetensors" in artifacts
    finally:
        mlflow.set_tracking_uri("")


def test_gradients_reach_every_layer_through_bidirectional_attention(tiny_encoder):
    from embedpipe.encoder import Encoder
    from embedpipe.training.losses import build_loss

    enc = Encoder.from_pretrained(tiny_encoder, device="cpu")
    enc.model.train()
    batch = enc.tokenize(["first query text", "second query", "positive one", "positive two here",
                          "negative one", "negative two"], 16)
    emb = enc.embed(batch)
    loss = build_loss("hard_negative_infonce")(emb[:2], emb[2:4], emb[4:].unsqueeze(1))
    loss.backward()
    for name, p in enc.model.named_parameters():
        if name != "embed_tokens.weight":
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    # bidirectional: the first position's output depends on the LAST input token (a causal model's would not)
    embeds = enc.model.embed_tokens(batch["input_ids"][:1]).detach().requires_grad_(True)
    out = enc.model(inputs_embeds=embeds, attention_mask=batch["attention_mask"][:1]).last_hidden_state
    out[0, 0].sum().backward()
    last = int(batch["attention_mask"][0].sum()) - 1
    assert embeds.grad[0, last].abs().sum() > 0


def test_records_with_too_few_negatives_are_refused_before_any_step(tiny_encoder, tmp_path):
    path = tmp_path / "short.jsonl"
    rows = make_records(8, negatives=4)
    rows[5]["negatives"] = rows[5]["negatives"][:2]
    write_records(rows, path)
    recipe = load_recipe(RECIPE, SMALL + ["training.stage2.short_records=error"])  # local.yaml drops them
    with pytest.raises(TrainingDataError, match=r"record 'pydoc-5' .* has 2 hard negative\(s\), the stage needs 4"):
        train_stage(recipe, "stage2", path, tiny_encoder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_short_records_can_be_dropped_and_are_counted(tiny_encoder, tmp_path):
    path = tmp_path / "short.jsonl"
    rows = make_records(8, negatives=4)
    rows[5]["negatives"] = rows[5]["negatives"][:2]
    rows[6]["negatives"] = []
    write_records(rows, path)
    recipe = load_recipe(RECIPE, SMALL + ["training.stage2.short_records=drop", "training.stage2.steps=1"])
    summary = train_stage(recipe, "stage2", path, tiny_encoder, tmp_path / "out")
    assert summary["dropped_short_records"] == 2 and summary["records"] == 6


def test_empty_text_is_refused_with_file_and_line(tiny_encoder, tmp_path):
    path = tmp_path / "empty.jsonl"
    rows = make_records(4)
    rows[2]["positives"] = ["   "]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(RecordError, match=r"empty.jsonl:3: field 'positives'"):
        train_stage(load_recipe(RECIPE, SMALL), "stage1", path, tiny_encoder, tmp_path / "out")


def test_batch_that_does_not_divide_is_refused():
    with pytest.raises(TrainingConfigError, match="batch_size 6 does not divide over 4 devices"):
        plan_batches(StageConfig(name="s", batch_size=6), 4)
    with pytest.raises(TrainingConfigError, match="not a multiple of micro_batch_size 3"):
        plan_batches(StageConfig(name="s", batch_size=8, micro_batch_size=3), 2)
    assert plan_batches(StageConfig(name="s", batch_size=8, micro_batch_size=2), 2) == (4, 2, 2)


def test_cli_train_then_consolidate(tiny_encoder, records, tmp_path):
    from typer.testing import CliRunner

    from embedpipe.cli import app

    sets = [a for s in [*SMALL, "training.stage1.steps=3", "training.stage1.checkpoint_every=2"] for a in ("--set", s)]
    result = CliRunner().invoke(app, ["train", "stage1", "--records", str(records), "--init-model", str(tiny_encoder),
                                      "--out", str(tmp_path / "out"), "--recipe", str(RECIPE), "--checkpoint-dir",
                                      str(tmp_path / "ck"), "--summary", str(tmp_path / "s.json"), *sets])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s.json").read_text())["steps"] == 3
    result = CliRunner().invoke(app, ["consolidate", str(tmp_path / "ck" / "step-00000002"), "--init-model",
                                      str(tiny_encoder), "--out", str(tmp_path / "c"), "--max-length", "48"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c" / "embedpipe.json").is_file()
    bad = CliRunner().invoke(app, ["train", "stage2", "--records", str(records), "--init-model", str(tiny_encoder),
                                   "--out", str(tmp_path / "x"), "--recipe", str(RECIPE), "--variant", "mix-z"])
    assert bad.exit_code != 0 and "no stage-2 variant 'mix-z'" in bad.output


@pytest.fixture
def s3_env(monkeypatch):
    """moto's S3 server on 127.0.0.1 (embedpipe.storage reads the endpoint from the environment)."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key, value in {"EMBEDPIPE_S3_ENDPOINT": f"127.0.0.1:{port}", "EMBEDPIPE_S3_SECURE": "false",
                       "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    yield
    server.stop()


def test_checkpoints_and_export_on_s3_resume_to_identical_weights(s3_env, tiny_encoder, records, tmp_path):
    from embedpipe import storage

    recipe = load_recipe(RECIPE, SMALL + ["training.stage1.checkpoint_every=2"])
    first = train_stage(recipe, "stage1", records, tiny_encoder, "s3://runs/first", checkpoint_dir="s3://runs/ckpt")
    assert first["start_step"] == 0
    assert json.loads(storage.read_text("s3://runs/ckpt/latest.json"))["step"] == 2
    # a second run on the same checkpoint prefix resumes at step 2 and ends where the first one ended
    again = train_stage(recipe, "stage1", records, tiny_encoder, "s3://runs/again", checkpoint_dir="s3://runs/ckpt")
    assert again["start_step"] == 2 and again["resumed_from"] == "step-00000002"
    a = storage.download("s3://runs/first", tmp_path / "first")
    b = storage.download("s3://runs/again", tmp_path / "again")
    assert same_weights(a, b)


@pytest.mark.parametrize("export_dtype, native, expected", [
    ("training", True, torch.bfloat16),  # bf16 autocast: the export in bf16
    ("training", False, torch.float32),  # a CPU without native bf16 trains in fp32 (a logged note), so exports fp32
    ("fp32", True, torch.float32)])
def test_export_is_in_the_training_dtype_or_fp32_on_request(tiny_encoder, records, tmp_path, monkeypatch, export_dtype,
                                                            native, expected):
    from embedpipe.encoder import read_export_metadata
    from embedpipe.training import run

    monkeypatch.setattr(run, "cpu_has_native_bf16", lambda: native)  # the same cases on any CPU (CI's lacks bf16)
    recipe = load_recipe(RECIPE, SMALL + ["training.stage1.steps=1", "training.precision=bf16",
                                          f"training.export_dtype={export_dtype}"])
    summary = train_stage(recipe, "stage1", records, tiny_encoder, tmp_path / "out")
    assert {t.dtype for t in weights(tmp_path / "out").values()} == {expected}
    assert summary["export_dtype"] == str(expected).removeprefix("torch.")
    assert read_export_metadata(tmp_path / "out")["training"]["export_dtype"] == summary["export_dtype"]
