"""What each pipeline step does with its files, as plain Python over local folders.

The KFP components in ``components/`` are thin wrappers over these functions (KFP hands them local paths for their
artifacts, on a laptop and in a pod alike); each function calls one area's step function through its published
contract and returns that step's typed summary (``embedpipe.orchestration.summaries``), which the component passes
on as JSON. Nothing here trains, mines or evaluates by itself.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from embedpipe.orchestration import summaries
from embedpipe.recipe import Recipe, RecipeError, recipe_from_tree

log = logging.getLogger(__name__)

SUMMARY = "step-summary.json"  # written beside a step's data outputs (never inside an encoder export)


def timed(model: type[summaries.StepSummary]):
    """The step's result as its ``model`` (a SummaryError naming the step and field when the area's summary lacks
    one), with ``step_seconds`` (the step's own compute, without process start and KFP bookkeeping)."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            summary = model.of(fn(*args, **kwargs), f"step {fn.__name__}")
            summary.step_seconds = round(time.perf_counter() - started, 3)
            return summary

        return wrapper

    return decorate


def recipe_from_json(recipe_json: str, overrides_json: str = "") -> Recipe:
    """The recipe a component was given, with an ablation cell's ``section.key`` overrides applied."""
    tree = json.loads(recipe_json)
    overrides = json.loads(overrides_json) if overrides_json else {}
    if "overrides" in overrides and "name" in overrides:  # an ablation cell
        overrides = overrides["overrides"]
    return recipe_from_tree(tree, overrides, origin=f"recipe given to the step (overrides {overrides})")


def step_cache_dir() -> Path:
    """Where steps keep caches that outlive a run (teacher embeddings, converted checkpoints)."""
    path = Path(os.environ.get("EMBEDPIPE_STEP_CACHE", Path.home() / ".cache" / "embedpipe" / "steps"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_summary(folder: Path, summary: dict) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SUMMARY).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


@timed(summaries.DataSummary)
def build_data(recipe: Recipe, out_dir: str | os.PathLike) -> summaries.DataSummary:
    """Data build: public sets -> records.jsonl, corpus.jsonl, manifest.json, eval/."""
    from embedpipe.data.build import build_training_data

    return build_training_data(recipe.data, Path(out_dir), stages=training_stages(recipe))


def training_stages(recipe: Recipe) -> dict:
    """The training stages whose data mixes the data step counts (each with its own weights and task types)."""
    return {"stage1": recipe.training.stage1, "stage2": recipe.training.stage2}


@timed(summaries.DownloadSummary)
def download_models(recipe: Recipe) -> summaries.DownloadSummary:
    """The run's one hub download (or, offline, the check that the model cache has it all)."""
    from embedpipe.orchestration.hub import download, download_plan

    entries = download_plan(recipe)
    offline = recipe.pipeline.hub.offline or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false")
    return {**download(entries, offline=offline), "planned": len(entries)}


def sdg_shard_store(recipe: Recipe, corpus: Path) -> str:
    """Where a run's SDG shards live, shared by the per-generator tasks and the filter step and kept across
    restarts: ``<artifact_root>/sdg-shards/<hash of the sdg section and the seed corpus>``."""
    import hashlib

    from embedpipe import storage

    digest = hashlib.sha256(recipe.sdg.model_dump_json().encode())
    if corpus.is_file():
        with corpus.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return storage.join(recipe.pipeline.artifact_root, "sdg-shards", digest.hexdigest()[:20])


@timed(summaries.SdgSummary)
def synthesize(recipe: Recipe, data_dir: str | os.PathLike, out_dir: str | os.PathLike,
               only_generator: str | None = None, generate: bool = True) -> summaries.SdgSummary:
    """SDG over the data step's corpus; with SDG disabled, an empty synthetic.jsonl says so downstream.

    ``only_generator``: one generator's shards (a per-generator task); ``generate=False``: filter the shards those
    tasks left in the shared shard store."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not recipe.sdg.enabled or not recipe.sdg.generators:
        (out / "synthetic.jsonl").write_text("")
        return _write_summary(out, {"skipped": "sdg disabled" if not recipe.sdg.enabled else "no generators",
                                    "records": 0})
    from embedpipe.data.sdg import generate_synthetic, synthetic_source

    corpus = Path(data_dir) / "corpus.jsonl"
    summary = generate_synthetic(recipe.sdg, corpus, out, source=synthetic_source(recipe.data),
                                 only_generator=only_generator, generate=generate,
                                 shard_store=sdg_shard_store(recipe, corpus))
    return _write_summary(out, summary)


def mining_cache_uri(recipe: Recipe) -> str | None:
    """The chunk cache the corpus-embedding tasks share: under an s3:// artifact root (a local run's tasks share
    the machine's step cache already)."""
    from embedpipe import storage

    root = recipe.pipeline.artifact_root
    return storage.join(root, "mining-cache") if storage.is_remote(root) else None


@timed(summaries.EmbedCorpusSummary)
def embed_corpus(recipe: Recipe, data_dir: str | os.PathLike, shard: int, shards: int) -> summaries.EmbedCorpusSummary:
    """One of the mining step's corpus-embedding tasks (the mining step then reuses every chunk)."""
    from embedpipe.mining.mine import embed_corpus_shard

    return embed_corpus_shard(Path(data_dir) / "corpus.jsonl", recipe.mining, shard, shards,
                              cache_dir=step_cache_dir() / "mining", cache_uri=mining_cache_uri(recipe))


@timed(summaries.MineSummary)
def mine(recipe: Recipe, data_dir: str | os.PathLike, synthetic_dir: str | os.PathLike,
         out_dir: str | os.PathLike) -> summaries.MineSummary:
    """Public + synthetic records, combined and decontaminated once, streamed to the miner; the mining corpus is the
    data step's corpus plus the documents SDG wrote (``sdg_documents.jsonl`` here). A record keeps the negatives it
    came with and mining fills the rest up to ``mining.top_k``."""
    from embedpipe.data.build import combine_for_mining
    from embedpipe.data.schema import kind_of, write_jsonl
    from embedpipe.mining.mine import mine_hard_negatives

    data, out = Path(data_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    combined = combine_for_mining(data / "records.jsonl", Path(synthetic_dir) / "synthetic.jsonl",
                                  eval_dir=data / "eval", decontaminate_against=recipe.data.decontaminate_against,
                                  lenient=recipe.data.lenient)
    corpus = [data / "corpus.jsonl"]
    documents = write_jsonl(combined.documents(), out / "sdg_documents.jsonl")
    if documents:
        corpus.append(out / "sdg_documents.jsonl")
    kinds_in: dict[str, int] = {}

    def counted():
        for record in combined.records():
            kind = kind_of(record)
            kinds_in[kind] = kinds_in.get(kind, 0) + 1
            yield record

    stats = mine_hard_negatives(counted(), corpus, recipe.mining, out / "records.jsonl",
                                cache_dir=step_cache_dir() / "mining", cache_uri=mining_cache_uri(recipe))
    kinds_out = records_by_kind(out / "records.jsonl")
    by_kind = {k: {"in": kinds_in.get(k, 0), "out": kinds_out.get(k, 0)} for k in sorted({*kinds_in, *kinds_out})}
    return _write_summary(out, {"combine": {**combined.report, "sdg_documents": documents}, "by_kind": by_kind,
                                "mining": stats})


def records_by_kind(path: Path) -> dict[str, int]:
    """Records of a file per :func:`embedpipe.data.schema.kind_of` (SDG task, else task type)."""
    from collections import Counter

    from embedpipe.data.schema import iter_records, kind_of

    return dict(Counter(kind_of(r) for r in iter_records(path, trusted=True)))


def base_model_source(recipe: Recipe, work_dir: str | os.PathLike) -> str:
    """What stage 1 starts from: the recipe's base (packaged name, folder, GGUF, hub id) or a tiny random Llama."""
    if recipe.model.random_init:
        from embedpipe.encoder.convert import random_tiny_llama

        target = Path(work_dir) / "random-init-base"
        if not (target / "config.json").exists():
            random_tiny_llama(target, seed=recipe.seed, **recipe.model.random_init)
        return str(target)
    return recipe.model.base


@timed(summaries.BaseEncoderSummary)
def base_encoder(recipe: Recipe, out_dir: str | os.PathLike) -> summaries.BaseEncoderSummary:
    """The untrained base (what stage 1 starts from) as an encoder export, with stage 1's text lengths."""
    from embedpipe.encoder.convert import convert_checkpoint

    out = Path(out_dir)
    source = base_model_source(recipe, tempfile.mkdtemp(prefix="embedpipe-base-"))
    stage1 = recipe.training.stage1
    convert_checkpoint(source, out, max_length=stage1.max_document_length, query_max_length=stage1.max_query_length)
    return {"base": recipe.model.base if not recipe.model.random_init else "random init", "source": str(source),
            "out_dir": str(out)}


def checkpoint_folder(recipe: Recipe, run_id: str, *parts: str) -> str | None:
    """Where a training step of pipeline run ``run_id`` keeps its checkpoints: ``<artifact_root>/<run_id>/checkpoints/
    <parts>`` (local or s3://). The same run gives the same folder, so a retried pod resumes from the last one;
    None without a run id (or with a placeholder KFP did not resolve)."""
    from embedpipe import storage

    if not run_id or "{{" in run_id:
        return None
    clean = [re.sub(r"[^A-Za-z0-9._-]+", "-", str(p)).strip("-") or "x" for p in (run_id, *parts)]
    return storage.join(recipe.pipeline.artifact_root, clean[0], "checkpoints", *clean[1:])


@timed(summaries.TrainSummary)
def train(recipe: Recipe, stage: str, records_dir: str | os.PathLike, init_model: str, out_dir: str | os.PathLike,
          variant: dict | None = None, checkpoint_dir: str | os.PathLike | None = None, kfp_run_id: str = "",
          cell: str | None = None) -> summaries.TrainSummary:
    """One training stage (a stage-2 variant when ``variant`` is given); ``out_dir`` becomes an encoder export.

    With ``training.gpus_per_node`` above 1 (one node) the stage runs as that many processes under torch's elastic
    launcher, one per GPU; ``checkpoint_dir`` (local or s3://) makes a retried step resume from its last checkpoint.
    ``kfp_run_id``: the pipeline run whose MLflow parent gets this job as a child run, logged while it trains
    (``cell``: the ablation cell it trains for)."""
    from embedpipe import tracking
    from embedpipe.training.run import train_stage

    records = Path(records_dir) / "records.jsonl"
    nproc = recipe.training.gpus_per_node
    with tracking.training_run(recipe, kfp_run_id, stage, variant, cell):
        if nproc > 1 and "WORLD_SIZE" not in os.environ:
            return train_local_processes(recipe, stage, records, init_model, out_dir, variant, checkpoint_dir, nproc)
        return train_stage(recipe, stage, records, init_model, Path(out_dir),  # mining's output: validated once
                           variant=variant, checkpoint_dir=checkpoint_dir, resume=True, trusted_records=True)


def train_local_processes(recipe: Recipe, stage: str, records: Path, init_model: str, out_dir, variant, checkpoint_dir,
                          nproc: int) -> dict:
    """The stage as ``nproc`` local processes (torch.distributed elastic launch); returns rank 0's summary."""

    import torch

    from embedpipe.training.launch import launch_local

    if torch.cuda.is_available() and torch.cuda.device_count() < nproc:
        raise RuntimeError(f"training.gpus_per_node is {nproc} but this pod sees {torch.cuda.device_count()} GPUs "
                           "(CUDA_VISIBLE_DEVICES / the step's GPU request)")
    work = Path(tempfile.mkdtemp(prefix="embedpipe-train-"))
    (work / "recipe.json").write_text(recipe.model_dump_json())
    argv = ["--recipe", str(work / "recipe.json"), "--stage", stage, "--records", str(records), "--init-model",
            str(init_model), "--out", str(out_dir), "--summary", str(work / "summary.json"), "--trusted-records"]
    if checkpoint_dir:
        argv += ["--checkpoint-dir", str(checkpoint_dir)]
    if variant:
        argv += ["--variant", json.dumps(variant, sort_keys=True)]
    launch_local(nproc, argv, run_id=f"embedpipe-{stage}")
    return json.loads((work / "summary.json").read_text())


@timed(summaries.MergeSummary)
def merge(recipe: Recipe, model_dirs: list[str], out_dir: str | os.PathLike,
          data_dir: str | os.PathLike | None = None) -> summaries.MergeSummary:
    """Merge the stage-2 checkpoints by the recipe's method: uniform, weighted, or greedy soup (which scores each
    candidate soup by Mean(Task) on the dev tasks: the data step's held-out dev splits plus the recipe's dev tasks)."""
    from embedpipe.merging.soup import evaluation_scorer, merge_with_config

    scorer = None
    if recipe.merge.method == "greedy_soup":
        eval_dir = Path(data_dir) / "eval" if data_dir else None
        tasks_dir = eval_dir if eval_dir and (eval_dir / "tasks.json").is_file() else None
        scorer = evaluation_scorer(recipe.evaluation, tasks_dir, tempfile.mkdtemp(prefix="embedpipe-soup-"),
                                   cache_dir=step_cache_dir() / "evaluation")
    return merge_with_config(recipe.merge, model_dirs, Path(out_dir), scorer=scorer)


@timed(summaries.EvalSummary)
def evaluate(recipe: Recipe, model_dir: str | os.PathLike, data_dir: str | os.PathLike, out_dir: str | os.PathLike,
             model_name: str | None = None, group: tuple[int, int] | None = None,
             role: str = "test") -> summaries.EvalSummary:
    """MTEB evaluation of a model on the recipe's tasks plus the data step's held-out tasks (``group``: one task
    group of a fanned-out evaluation; ``role="dev"``: the dev tasks, for model selection)."""
    from embedpipe.evaluation.run import evaluate as run_evaluation

    eval_dir = Path(data_dir) / "eval"
    return run_evaluation(Path(model_dir), recipe.evaluation, Path(out_dir),
                          extra_tasks_dir=eval_dir if (eval_dir / "tasks.json").is_file() else None,
                          cache_dir=step_cache_dir() / "evaluation", model_name=model_name, group=group, role=role)


def variant_name(variant: dict | None, index: int | None = None) -> str:
    if variant and variant.get("name"):
        return str(variant["name"])
    return f"variant-{index}" if index is not None else "variant"


def stage2_variants(recipe: Recipe) -> list[dict]:
    """The recipe's stage-2 runs as ``train(variant=...)`` dicts (typed and checked when the recipe loads)."""
    return [v.overrides() for v in recipe.training.variants()]


def read_summary(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else {}
