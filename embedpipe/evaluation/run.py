"""Evaluate a model with mteb: named benchmarks / tasks (hub access) and local-file tasks (offline), results in mteb's
result layout (``out_dir/results/<org>__<model>/<revision>/<Task>.json``) so they sit beside public results.

The revision is the content hash of the weights, so a re-run on the same model finds its results and skips those tasks,
and the embedding cache (mteb's ``CachedEmbeddingWrapper``, keyed by model hash and instruction table) means that even
a task whose results were deleted is scored again without encoding anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

from embedpipe import tracking
from embedpipe.encoder.encoder import EXPORT_MARKER, NotAnEncoderExport
from embedpipe.evaluation.config import EvaluationConfig

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
TASK_TYPES_FILE = "task_types.json"


def resolve_model_dir(model: str | Path) -> tuple[Path, str]:
    """(folder, kind) where kind is ``"embedpipe"`` (encoder export) or ``"sentence-transformers"``."""
    from embedpipe.assets import resolve_model

    path = Path(resolve_model(str(model)))
    if not path.exists():
        raise FileNotFoundError(f"model {model} does not exist")
    if path.is_dir() and (path / EXPORT_MARKER).is_file():
        return path, "embedpipe"
    if path.is_dir() and (path / "modules.json").is_file():
        return path, "sentence-transformers"
    raise NotAnEncoderExport(
        f"{path} is not an embedpipe encoder export (no {EXPORT_MARKER}) nor a sentence-transformers model "
        "(no modules.json); create an export with `embedpipe convert`"
    )


def model_revision(model_dir: Path) -> str:
    """Short content hash of the weight files (safetensors or PyTorch bin)."""
    digest = hashlib.sha256()
    files = sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not files:
        raise NotAnEncoderExport(f"{model_dir} holds no weight files (*.safetensors / *.bin)")
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def mteb_model_name(model_dir: Path, model_name: str | None, given: str | Path | None = None) -> str:
    """mteb wants ``org/name``; bare names are put under ``embedpipe/``; packaged aliases keep their public name."""
    from embedpipe.assets import MINILM

    if model_name is None and given is not None and str(given).lower() == MINILM:
        return "sentence-transformers/all-MiniLM-L6-v2"
    name = model_name or model_dir.name
    return name if "/" in name else f"embedpipe/{name}"


ROLES = ("test", "dev")


def collect_tasks(config: EvaluationConfig, extra_tasks_dir: str | Path | None, role: str = "test") -> list:
    """The tasks of one role. ``test``: local tasks (recipe + the data build's tasks.json) and named mteb tasks /
    benchmark, on their test splits. ``dev``: the same local tasks' ``dev_split`` (those that have one), the
    recipe's ``dev_local_tasks`` and the mteb ``dev_tasks`` on their dev splits: what model selection sees."""
    from embedpipe.evaluation.tasks import build_task, read_tasks_file

    if role not in ROLES:
        raise ValueError(f"evaluation role {role!r}: one of {', '.join(ROLES)}")
    local = list(config.local_tasks) + (read_tasks_file(extra_tasks_dir) if extra_tasks_dir is not None else [])
    if role == "dev":
        cap = config.dev_max_corpus or config.max_corpus
        tasks = [build_task(t.model_copy(update={"split": t.dev_split, "dev_split": None}), max_corpus=cap)
                 for t in local if t.dev_split]
        tasks += [build_task(t, max_corpus=cap) for t in config.dev_local_tasks]
        tasks += [_mteb_dev_task(name) for name in config.dev_tasks]
        if config.dev_tasks:
            _check_dev_is_not_test(config, tasks)
    else:
        import mteb

        tasks = [build_task(t, max_corpus=config.max_corpus) for t in local]
        if config.tasks:
            tasks += list(mteb.get_tasks(tasks=config.tasks))
        if config.benchmark:
            tasks += list(mteb.get_benchmark(config.benchmark).tasks)
    names = [t.metadata.name for t in tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{role} task {duplicates[0]!r} is defined more than once")
    if not tasks and role == "dev":
        raise ValueError("no dev tasks: set evaluation.dev_tasks (mteb tasks' dev splits) or evaluation.dev_local_tasks, "
                         "or give a local task a dev_split (the data build's pydoc source holds one out: "
                         "data.sources[].dev_fraction)")
    if not tasks:
        raise ValueError("nothing to evaluate: set evaluation.benchmark, evaluation.tasks or evaluation.local_tasks, "
                         "or give a folder with tasks.json")
    return tasks


def _check_dev_is_not_test(config: EvaluationConfig, dev_tasks: list) -> None:
    """No dev task may be a split the test tasks score (a benchmark scores some tasks' validation splits too)."""
    import mteb

    test = list(mteb.get_tasks(tasks=config.tasks)) if config.tasks else []
    if config.benchmark:
        test += list(mteb.get_benchmark(config.benchmark).tasks)
    scored = {(t.metadata.name, split) for t in test for split in t.eval_splits}
    for task in dev_tasks:
        clash = [s for s in task.eval_splits if (task.metadata.name, s) in scored]
        if clash:
            raise ValueError(f"evaluation.dev_tasks: {task.metadata.name} split {clash[0]!r} is scored by the test "
                             f"tasks ({config.benchmark or config.tasks}); choose a split or task they do not score")


def _mteb_dev_task(name: str):
    """An mteb task restricted to its dev split; an error names the splits it has when that one is not among them."""
    import mteb

    from embedpipe.evaluation.config import dev_task_split

    task_name, split = dev_task_split(name)
    task = mteb.get_task(task_name)
    if split not in task.metadata.eval_splits:
        raise ValueError(f"evaluation.dev_tasks: mteb task {task_name!r} has no split {split!r} among its evaluation "
                         f"splits {task.metadata.eval_splits}; name one as '{task_name}:<split>'")
    if split in ("test",):
        raise ValueError(f"evaluation.dev_tasks: {name!r} names a test split; dev tasks must not be test data")
    return mteb.get_task(task_name, eval_splits=[split])


def instruction_table(config: EvaluationConfig) -> dict[str, str]:
    table = dict(config.instructions)
    for task in config.local_tasks:
        if task.instruction:
            table.setdefault(task.name, task.instruction)
    return table


def evaluate(
    model_dir: str | Path,
    config: EvaluationConfig,
    out_dir: str | Path,
    extra_tasks_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    model_name: str | None = None,
    group: tuple[int, int] | None = None,
    role: str = "test",
) -> dict:
    """Run every configured task; return per-task main scores, Mean(Task), Mean(TaskType) and (with reference
    results) the Borda rank. Scores are logged to the active MLflow run, if any.

    ``group=(i, n)``: only the i-th of n task groups (tasks sorted by name, every n-th), one pod each; then
    :func:`merge_results` puts the groups' folders together into what one pod writes.

    ``role="dev"`` scores the dev tasks instead (see :func:`collect_tasks`); give it its own ``out_dir``: mteb's
    results folder is keyed by task name, and a dev task keeps its test task's name."""
    import mteb
    from mteb.models.cache_wrappers import CachedEmbeddingWrapper

    from embedpipe.encoder.convert import cache_dir as embedpipe_cache

    path, kind = resolve_model_dir(model_dir)
    revision = model_revision(path)
    name = mteb_model_name(path, model_name, model_dir)
    tasks = collect_tasks(config, extra_tasks_dir, role)
    if group is not None:
        if not (group[1] >= 1 and 0 <= group[0] < group[1]):
            raise ValueError(f"evaluation group {group[0]} of {group[1]}: the index must be in [0, {group[1]})")
        tasks = sorted(tasks, key=lambda t: t.metadata.name)[group[0]::group[1]]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = mteb.ResultCache(out)

    if kind == "embedpipe":
        from embedpipe.evaluation.model import EmbedpipeEncoder

        table = instruction_table(config)
        model = EmbedpipeEncoder(path, name, revision, instructions=table, precision=config.precision)
        # the cache key: the instruction table, and the arithmetic when it is not the weights' own ("auto": the
        # corpus in bf16, queries in fp32)
        keyed = table if config.precision == "fp32" else {**table, "__precision__": "auto:bf16-corpus"}
        flavour = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:8]
    else:
        from mteb.models import SentenceTransformerEncoderWrapper
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformerEncoderWrapper(SentenceTransformer(str(path)))
        model.mteb_model_meta = model.mteb_model_meta.model_copy(update={"name": name, "revision": revision})
        flavour = "st"
    meta = model.mteb_model_meta

    skipped = [t.metadata.name for t in tasks if results.get_task_result_path(t.metadata.name, meta).is_file()]
    if skipped:
        log.info("skipping %d task(s) with results already in %s: %s", len(skipped), out, ", ".join(skipped))
    embeddings = Path(cache_dir) if cache_dir is not None else embedpipe_cache() / "embeddings"
    cached = CachedEmbeddingWrapper(model, embeddings / meta.model_name_as_path() / revision / flavour)
    try:  # closed on error too: the cache's memory maps and file handles would outlive a failed task
        result = mteb.evaluate(
            cached,
            tasks,
            cache=results,
            overwrite_strategy="only-missing",
            encode_kwargs={"batch_size": config.batch_size},
            show_progress_bar=False,
            raise_error=True,
        )
    finally:
        cached.close()

    task_types = {t.metadata.name: t.metadata.type for t in tasks}
    scores = {r.task_name: float(r.get_score()) for r in result.task_results}
    summary = _summary(name, revision, path, str(results.get_task_result_path("x", meta).parent), scores, task_types,
                       [t for t in scores if t not in skipped], skipped, getattr(model, "encoded_texts", None))
    summary["role"] = role
    return _finish(summary, out, config)


def _summary(name, revision, path, results_dir, scores, task_types, evaluated, skipped, encoded) -> dict:
    per_type: dict[str, list[float]] = {}
    for task, score in scores.items():
        per_type.setdefault(task_types[task], []).append(score)
    mean_per_type = {k: sum(v) / len(v) for k, v in per_type.items()}
    return {
        "model_name": name,
        "revision": revision,
        "model_dir": str(path),
        "results_dir": results_dir,
        "scores": scores,
        "task_types": task_types,
        "mean_task": _mean(scores.values()),
        "mean_task_type": _mean(mean_per_type.values()),
        "mean_per_type": mean_per_type,
        "evaluated": evaluated,
        "skipped": skipped,
        "encoded_texts": encoded,
    }


def merge_results(group_dirs: list[str | Path], out_dir: str | Path, config: EvaluationConfig) -> dict:
    """The task groups' result folders (see ``evaluate(group=...)``) as one mteb results folder with one summary,
    Mean(Task) / Mean(TaskType) / Borda rank computed over all tasks as one pod computes them."""
    import shutil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for folder in map(Path, group_dirs):
        summary_file = folder / SUMMARY_FILE
        if not summary_file.is_file():
            raise FileNotFoundError(f"evaluation group folder {folder} has no {SUMMARY_FILE}: did its task finish?")
        parts.append(json.loads(summary_file.read_text()))
        if (folder / "results").is_dir():
            shutil.copytree(folder / "results", out / "results", dirs_exist_ok=True)
    if len({(p["model_name"], p["revision"]) for p in parts}) > 1:
        raise ValueError(f"evaluation groups scored different models: {sorted({p['model_name'] for p in parts})}")
    overlap = [t for i, p in enumerate(parts) for t in p["scores"] if any(t in q["scores"] for q in parts[:i])]
    if overlap:
        raise ValueError(f"evaluation groups overlap on tasks {overlap[:5]}")
    first = parts[0]
    scores = {t: s for p in parts for t, s in p["scores"].items()}
    task_types = {t: k for p in parts for t, k in p["task_types"].items()}
    encoded = [p.get("encoded_texts") for p in parts]
    summary = _summary(first["model_name"], first["revision"], first["model_dir"],
                       str(out / Path(first["results_dir"]).relative_to(Path(first["results_dir"]).parents[2])),
                       scores, task_types, [t for p in parts for t in p["evaluated"]],
                       [t for p in parts for t in p["skipped"]],
                       sum(encoded) if all(isinstance(e, int) for e in encoded) else None)
    roles = {p.get("role", "test") for p in parts}
    if len(roles) > 1:
        raise ValueError(f"evaluation groups mix roles {sorted(roles)}")
    summary["role"] = roles.pop()
    return _finish(summary, out, config, groups=len(parts))


def _finish(summary: dict, out: Path, config: EvaluationConfig, groups: int | None = None) -> dict:
    name, task_types = summary["model_name"], summary["task_types"]
    if groups is not None:
        summary["groups"] = groups
    _write_task_types(out, task_types)
    if config.reference_results and summary.get("role", "test") == "test":  # public results are test scores
        from embedpipe.evaluation.leaderboard import build_leaderboard, load_results_folder

        board = build_leaderboard(
            load_results_folder(config.reference_results) + load_results_folder(out),
            task_types=task_types,
            tasks=list(task_types),
        )
        summary["leaderboard"] = board.to_records()
        summary["borda_rank"] = board.rank_of(name)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    _log_to_mlflow(summary, out)
    return summary


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else math.nan


def _write_task_types(out: Path, task_types: dict[str, str]) -> None:
    path = out / TASK_TYPES_FILE
    known = json.loads(path.read_text()) if path.is_file() else {}
    known.update(task_types)
    path.write_text(json.dumps(known, indent=2, sort_keys=True))


def _metric_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in text)


def role_metrics(summary: dict) -> dict[str, float]:
    """An evaluation summary as ``<role>_<metric>`` numbers: ``dev_mean_task``, ``dev_mean_task_type``,
    ``dev_<Task>``, ``dev_type.<Type>`` (``test_...`` for the test role), what tracking and `embedpipe compare` show."""
    role = summary.get("role", "test")
    metrics = {f"{role}_{_metric_name(task)}": score for task, score in summary["scores"].items()}
    metrics.update({f"{role}_type.{_metric_name(k)}": v for k, v in summary["mean_per_type"].items()})
    metrics[f"{role}_mean_task"] = summary["mean_task"]
    metrics[f"{role}_mean_task_type"] = summary["mean_task_type"]
    if summary.get("borda_rank") is not None:
        metrics[f"{role}_borda_rank"] = float(summary["borda_rank"])
    return {k: float(v) for k, v in metrics.items() if v == v}


def _log_to_mlflow(summary: dict, out: Path) -> None:
    if not tracking.active():
        return
    import mlflow

    role = summary.get("role", "test")
    metrics = role_metrics(summary)
    if role == "test":  # the names earlier runs logged, kept beside test_*
        metrics.update({f"eval.{_metric_name(task)}": score for task, score in summary["scores"].items()})
        metrics.update({f"eval.type.{_metric_name(k)}": v for k, v in summary["mean_per_type"].items()})
        metrics["eval.mean_task"] = summary["mean_task"]
        metrics["eval.mean_task_type"] = summary["mean_task_type"]
        if summary.get("borda_rank") is not None:
            metrics["eval.borda_rank"] = float(summary["borda_rank"])
    mlflow.log_metrics({k: v for k, v in metrics.items() if v == v})
    mlflow.set_tag(f"{'eval' if role == 'test' else 'dev'}.model_revision", summary["revision"])
    where = "evaluation" if role == "test" else "evaluation-dev"
    mlflow.log_artifact(str(out / SUMMARY_FILE), artifact_path=where)
    mlflow.log_artifacts(summary["results_dir"], artifact_path=f"{where}/results")
