"""MLflow tracking: an experiment per recipe, the recipe as parameters, parent and child runs, scores, artifacts, the
model registry. Reading runs back side by side (``embedpipe compare``) is embedpipe/evaluation/compare.py.

Step functions log to the active run when there is one; the pipeline's ``track`` step (and the CLI) open the runs.
The tracking URI is the recipe's ``pipeline.mlflow_tracking_uri``: a local SQLite file by default, an MLflow server
(``http://...``) by configuration alone.
"""

from __future__ import annotations

import json
import logging
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter value


class TrackingError(RuntimeError):
    """The MLflow store cannot be reached or used; the message names the URI."""


def resolve_tracking_uri(uri: str, base: str | os.PathLike | None = None) -> str:
    """Make a relative ``sqlite:///`` path (or a bare folder) absolute against ``base`` so subprocesses agree."""
    base = Path(base or os.getcwd())
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_absolute():
            return f"sqlite:///{(base / path).resolve()}"
    if "://" not in uri and uri:
        return str((base / uri).resolve())
    return uri


def setup(tracking_uri: str) -> str:
    """Point MLflow at ``tracking_uri`` (creating a SQLite file's folder) and return it."""
    import mlflow

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    return tracking_uri


def check_tracking_uri(tracking_uri: str, timeout: float = 5.0) -> None:
    """Pre-flight: an MLflow server answers its health endpoint, or a SQLite store's folder is writable."""
    if tracking_uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        url = tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - the configured server
                if response.status != 200:
                    raise TrackingError(f"MLflow server {tracking_uri} answered {response.status} on /health")
        except (urllib.error.URLError, OSError) as err:
            raise TrackingError(f"MLflow server {tracking_uri} is not reachable: {err}") from None
    elif tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri[len("sqlite:///"):]).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrackingError(f"MLflow store {tracking_uri}: cannot create {folder}: {err}") from None
        if not os.access(folder, os.W_OK):
            raise TrackingError(f"MLflow store {tracking_uri}: {folder} is not writable")


# ------------------------------------------------------------------------------------------- pipeline runs
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # how MLflow 3.x's UI files an experiment (GenAI vs model training)
MODEL_TRAINING_KIND = "custom_model_development"
KFP_RUN_TAG = "embedpipe.kfp_run_id"  # the pipeline run a parent belongs to: how every step finds its parent
KIND_TAG = "embedpipe.kind"  # pipeline | training | cell
JOB_TAG = "embedpipe.job"  # a training job's key within its pipeline run (stage1, stage2/mix-a, <cell>/stage2/mix-a)
STAGE_TAG = "embedpipe.stage"
CELL_TAG = "embedpipe.cell"
VARIANT_TAG = "embedpipe.variant"
CACHED_TAG = "embedpipe.cached"  # a child recorded from a cached step's summary (it did not train in this run)
FAILURE_TAG = "embedpipe.failure"  # why a run ended FAILED
RUN_ID_ENV = "MLFLOW_RUN_ID"  # MLflow's own: ``mlflow.start_run()`` resumes this run (training's worker processes)


def _client():
    import mlflow

    return mlflow.MlflowClient()


def experiment_id(name: str) -> str:
    """The experiment's id, created when missing, filed under MLflow's model-training view.

    MLflow 3.4+ files an experiment by its ``mlflow.experimentKind`` tag (``genai_development`` or
    ``custom_model_development``; untagged, the UI guesses or asks). MLflow 3.17's UI (its side bar's GenAI / Model
    training switch, per browser, GenAI by default) opens an experiment by that switch alone: a plain experiment link
    lands on the GenAI overview whatever the tag (seen in headless Chromium), so the links embedpipe prints carry
    ``?workflowType=machine_learning`` (:func:`ui_url`), which opens the training runs."""
    from mlflow.exceptions import MlflowException

    client = _client()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
        except MlflowException:  # another step created it meanwhile
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING_KIND:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return experiment.experiment_id


def ui_url(tracking_uri: str, experiment: str, run_id: str | None = None) -> str:
    """Where to look in MLflow's UI: the experiment's training runs (or one run) in the machine-learning view. For
    a local store, the ``mlflow ui`` command that serves it, then the path on that server."""
    path = f"#/experiments/{experiment}" + (f"/runs/{run_id}" if run_id else "/runs") + \
        "?workflowType=machine_learning"
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{path}"
    return f"mlflow ui --backend-store-uri {tracking_uri}  then  http://127.0.0.1:5000/{path}"


def pipeline_run_name(recipe_name: str, run_name: str = "", kfp_run_name: str = "") -> str:
    """``<recipe> · <run>``: the run's given name, else the pipeline run's (KFP: ``embedpipe-full-<timestamp>``)."""
    import time

    label = run_name or (kfp_run_name if kfp_run_name and "{{" not in kfp_run_name else "") or \
        time.strftime("%Y-%m-%d-%H%M%S", time.gmtime())
    return f"{recipe_name} · {label}"


def _source_tags(what: str) -> dict[str, str]:
    """What MLflow shows as a run's source (left alone it is the KFP ``executor`` script)."""
    from mlflow.utils.mlflow_tags import MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE

    return {MLFLOW_SOURCE_NAME: what, MLFLOW_SOURCE_TYPE: "JOB"}


def open_pipeline_run(recipe, pipeline: str, kfp_run_id: str, run_name: str = "", kfp_run_name: str = "") -> str:
    """The pipeline's parent run, opened by its first step: named ``<recipe> · <run>``, the recipe as params, tagged
    with the KFP run id (the later steps find it by that). A retried first step gets the run it opened before."""
    from mlflow.entities import Param
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    exp_id = experiment_id(recipe.experiment_name)
    existing = find_pipeline_run(recipe.experiment_name, kfp_run_id)
    if existing:
        return existing
    name = pipeline_run_name(recipe.name, run_name, kfp_run_name)
    client = _client()
    run = client.create_run(exp_id, run_name=name, tags={
        MLFLOW_RUN_NAME: name, KFP_RUN_TAG: kfp_run_id, KIND_TAG: "pipeline", "embedpipe.pipeline": pipeline,
        "embedpipe.recipe": recipe.name, **_source_tags(f"embedpipe {pipeline} pipeline ({recipe.name})")})
    params = [Param(k, v) for k, v in params_of(recipe).items()]
    for start in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[start:start + 100])
    return run.info.run_id


def find_pipeline_run(experiment_name: str, kfp_run_id: str) -> str | None:
    """The parent run of pipeline run ``kfp_run_id`` (None: no such run, or no run id)."""
    if not kfp_run_id or "{{" in kfp_run_id:
        return None
    client = _client()
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`{KFP_RUN_TAG}` = '{kfp_run_id}' and tags.`{KIND_TAG}` = 'pipeline'",
                              max_results=1)
    return runs[0].info.run_id if runs else None


def latest_pipeline_run(experiment_name: str) -> str:
    """The newest pipeline parent run of the experiment (``embedpipe compare --parent latest``)."""
    client = _client()
    experiment = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{KIND_TAG}` = 'pipeline'",
                              order_by=["attributes.start_time DESC"], max_results=1) if experiment else []
    if not runs:
        raise TrackingError(f"experiment {experiment_name!r} has no pipeline run (at {client.tracking_uri})")
    return runs[0].info.run_id


def children(parent_run_id: str, kind: str | None = None) -> list:
    """The parent's child runs (``kind``: only ``training`` or ``cell`` ones), oldest first."""
    client = _client()
    parent = client.get_run(parent_run_id)
    filter_string = f"tags.mlflow.parentRunId = '{parent_run_id}'"
    if kind:
        filter_string += f" and tags.`{KIND_TAG}` = '{kind}'"
    return client.search_runs([parent.info.experiment_id], filter_string=filter_string,
                              order_by=["attributes.start_time ASC"], max_results=5000)


def close_pipeline_run(parent_run_id: str, failed: bool = False) -> dict:
    """End the parent now (its duration: the first step's start to the last step's end). Children still RUNNING
    belong to steps that died without ending them (killed, out of memory): they end FAILED."""
    client = _client()
    killed = [c.info.run_id for c in children(parent_run_id) if c.info.status == "RUNNING"]
    for run_id in killed:
        client.set_tag(run_id, FAILURE_TAG, "the step ended without closing its run (killed?)")
        client.set_terminated(run_id, "FAILED")
    client.set_terminated(parent_run_id, "FAILED" if failed else "FINISHED")
    run = client.get_run(parent_run_id)
    return {"status": run.info.status, "seconds": round((run.info.end_time - run.info.start_time) / 1000, 2),
            "ended_failed_children": killed}


def fail_pipeline_runs_since(experiment_name: str, since_ms: int, reason: str) -> list[str]:
    """The parents that started at or after ``since_ms`` and did not finish: one still RUNNING ends FAILED, and
    each gets ``reason`` as its failure (the local runner calls this when kfp.local raises: it names the failed step,
    where the exit handler's own tag could only say that the steps failed)."""
    client = _client()
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`{KIND_TAG}` = 'pipeline' and attributes.start_time >= {int(since_ms)}")
    runs = [r for r in runs if r.info.status in ("RUNNING", "FAILED")]
    for run in runs:
        tag_failure(run.info.run_id, reason)
        if run.info.status == "RUNNING":
            close_pipeline_run(run.info.run_id, failed=True)
    return [r.info.run_id for r in runs]


def tag_failure(run_id: str, reason: str) -> None:
    """Why the run ended FAILED (``embedpipe.failure``: the error, cut to MLflow's tag length)."""
    _client().set_tag(run_id, FAILURE_TAG, reason[:5000])


def run_status(run_id: str) -> str:
    """RUNNING, FINISHED, FAILED or KILLED."""
    return _client().get_run(run_id).info.status


def job_key(stage: str, variant: dict | None = None, cell: str | None = None) -> str:
    """A training job's key in its pipeline run: ``stage1``, ``stage2/<variant>``, ``<cell>/stage2/<variant>``."""
    parts = ([cell] if cell else []) + [stage] + ([str(variant.get("name") or "variant")] if variant else [])
    return "/".join(parts)


def find_child(parent_run_id: str, job: str):
    """The child run of training job ``job`` under the parent (the last one opened), or None."""
    client = _client()
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`{JOB_TAG}` = '{job}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def log_job_metrics(recipe, kfp_run_id: str, job: str, metrics: dict[str, float]) -> str | None:
    """Metrics (e.g. a stage-2 model's dev scores) into training job ``job``'s child run of pipeline run
    ``kfp_run_id`` (``job=""``: the parent run itself), when the step that scores it runs; returns the run's id
    (None: no parent or no such child, as for a bare run or a training step taken from KFP's cache)."""
    if not kfp_run_id or "{{" in kfp_run_id:
        return None
    setup(recipe.pipeline.mlflow_tracking_uri)
    parent = find_pipeline_run(recipe.experiment_name, kfp_run_id)
    if parent is None:
        return None
    if job:
        child = find_child(parent, job)
        if child is None:
            return None
        run_id = child.info.run_id
    else:
        run_id = parent
    log_metrics_to(run_id, metrics)
    return run_id


def log_metrics_to(run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Finite metrics to a run by id, leaving its status and times alone (scores added to a finished child)."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    values = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None and math.isfinite(float(v))]
    if values:
        _client().log_batch(run_id, metrics=values)


@contextmanager
def training_run(recipe, kfp_run_id: str, stage: str, variant: dict | None = None,
                 cell: str | None = None) -> Iterator[Any]:
    """A training job's own child run of its pipeline's parent, active while it trains: the training loop's metrics
    (loss, lr, grad norm, tokens/s, MFU on GPU) go there live. An exception ends it FAILED with what it logged.

    Without a parent to join (no KFP run id, no parent opened: a bare ``embedpipe train``), nothing is opened.
    Worker processes the job starts find the run in ``MLFLOW_RUN_ID`` (:func:`resumed_run`)."""
    if not kfp_run_id or "{{" in kfp_run_id or active():
        yield None
        return
    import mlflow

    setup(recipe.pipeline.mlflow_tracking_uri)
    parent = find_pipeline_run(recipe.experiment_name, kfp_run_id)
    if parent is None:
        log.warning("no MLflow parent run for pipeline run %s in %s: training untracked", kfp_run_id,
                    recipe.experiment_name)
        yield None
        return
    job = job_key(stage, variant, cell)
    name = job.replace("/", " · ")
    tags = {JOB_TAG: job, KIND_TAG: "training", STAGE_TAG: stage, "embedpipe.recipe": recipe.name,
            **_source_tags(f"embedpipe {stage} training ({recipe.name})")}
    if variant:
        tags[VARIANT_TAG] = str(variant.get("name") or "variant")
    if cell:
        tags[CELL_TAG] = cell
    mlflow.set_experiment(experiment_id=experiment_id(recipe.experiment_name))
    with mlflow.start_run(run_name=name, parent_run_id=parent, nested=True, tags=tags) as run:
        if variant:
            log_params({f"variant.{k}": v for k, v in variant.items()})
        with _environ({RUN_ID_ENV: run.info.run_id, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}):
            yield run


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    previous = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def worker_env() -> dict[str, str]:
    """The environment a training job's worker pods need to log into the child run open here (none: nothing)."""
    return {RUN_ID_ENV: os.environ[RUN_ID_ENV]} if os.environ.get(RUN_ID_ENV) else {}


@contextmanager
def resumed_run(rank: int = 0) -> Iterator[Any]:
    """In a training worker process: rank 0 logs into the run its launcher opened (``MLFLOW_RUN_ID``), if any."""
    run_id = os.environ.get(RUN_ID_ENV)
    if rank != 0 or not run_id or active():
        yield None
        return
    import mlflow

    with mlflow.start_run(run_id=run_id) as run:
        yield run


def params_of(recipe) -> dict[str, str]:
    """The recipe flattened into ``section.key`` parameters, long values cut to MLflow's limit."""
    return {k: (v if len(v) <= MAX_PARAM_CHARS else v[: MAX_PARAM_CHARS - 3] + "...") for k, v in recipe.flat_params().items()}


@contextmanager
def recipe_run(recipe, run_name: str | None = None, parent_run_id: str | None = None, tags: dict | None = None,
               params: dict[str, Any] | None = None) -> Iterator[Any]:
    """Open a run in the recipe's experiment (a child of ``parent_run_id`` when given) with the recipe as params."""
    import mlflow

    mlflow.set_experiment(experiment_id=experiment_id(recipe.experiment_name))
    with mlflow.start_run(run_name=run_name, parent_run_id=parent_run_id, nested=parent_run_id is not None,
                          tags={"embedpipe.recipe": recipe.name, **(tags or {})}) as run:
        log_params({**params_of(recipe), **{k: str(v) for k, v in (params or {}).items()}})
        yield run


def active() -> bool:
    """Whether an MLflow run is active: the one guard every area's logging goes through (steps log to the caller's
    run and do nothing without one). MLflow never imported means no run was started, and importing it costs seconds."""
    import sys

    mlflow = sys.modules.get("mlflow")
    return mlflow is not None and mlflow.active_run() is not None


def log_params(params: dict[str, Any]) -> None:
    """Parameters to the active run (none: nothing), in batches of 100 (MLflow's limit), values cut to its length
    limit; keys the run already holds are skipped (a pipeline run may have logged the recipe: MLflow refuses to log a
    parameter twice)."""
    if not active():
        return
    import mlflow

    existing = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    items = [(k, str(v)[:MAX_PARAM_CHARS]) for k, v in params.items() if k not in existing]
    for start in range(0, len(items), 100):
        mlflow.log_params(dict(items[start:start + 100]))


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Finite metrics to the active run (none: nothing)."""
    if not active():
        return
    import mlflow

    values = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    if values:
        mlflow.log_metrics(values, step=step)


def numeric_metrics(tree: Any, prefix: str = "") -> dict[str, float]:
    """Every finite number in a nested summary, keyed by its dotted path (MLflow metric names)."""
    out: dict[str, float] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(numeric_metrics(value, f"{prefix}{key}."))
    elif isinstance(tree, bool):
        pass
    elif isinstance(tree, (int, float)) and math.isfinite(tree):
        name = "".join(c if c.isalnum() or c in "_-./ " else "_" for c in prefix.rstrip("."))
        out[name] = float(tree)
    return out


def log_scores(scores: dict) -> dict[str, float]:
    """Log an evaluation summary: per-task, per-type, mean and Borda numbers become metrics; the JSON an artifact."""
    import mlflow

    metrics = numeric_metrics(scores)
    if metrics:
        mlflow.log_metrics(metrics)
    mlflow.log_dict(scores, "evaluation/scores.json")
    return metrics


def loss_curve_png(history: list[dict], path: str | os.PathLike, title: str = "training loss") -> Path:
    """Plot ``[{"step", "loss", ...}]`` to a PNG (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    steps = [h["step"] for h in history if "loss" in h]
    losses = [h["loss"] for h in history if "loss" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def log_training(summary: dict, history: list[dict], name: str) -> None:
    """A training stage's summary numbers (prefixed by ``name``), its loss history and its loss curve PNG."""
    import tempfile
    import time

    import mlflow
    from mlflow.entities import Metric

    metrics = {f"{name}.{k}": v for k, v in numeric_metrics(summary).items()}
    if metrics:
        mlflow.log_metrics(metrics)
    now = int(time.time() * 1000)
    losses = [Metric(f"{name}.loss", float(e["loss"]), now, int(e["step"]))
              for e in history if "loss" in e and "step" in e]
    if losses:  # one batched call (chunked by the client), not a request per step
        run = mlflow.active_run() or mlflow.start_run()
        mlflow.MlflowClient().log_batch(run.info.run_id, metrics=losses)
    mlflow.log_dict(summary, f"training/{name}/summary.json")
    if history:
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(loss_curve_png(history, Path(tmp) / f"loss-{name}.png", f"{name} loss")),
                                f"training/{name}")


def _pyfunc_class():
    import mlflow.pyfunc

    class EmbeddingModel(mlflow.pyfunc.PythonModel):
        """An embedpipe encoder export served by MLflow: a list/Series of texts in, unit-norm vectors out."""

        def load_context(self, context):
            from embedpipe.encoder import Encoder

            self.encoder = Encoder.from_pretrained(context.artifacts["encoder"])

        def predict(self, context, model_input, params=None):
            texts = list(model_input.iloc[:, 0]) if hasattr(model_input, "iloc") else list(model_input)
            return self.encoder.encode(texts)

    return EmbeddingModel


def log_and_register_model(model_dir: str | os.PathLike, registered_name: str | None) -> dict:
    """Log the encoder export as an MLflow pyfunc model of the active run and register it when a name is given."""
    import mlflow

    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=_pyfunc_class()(),
        artifacts={"encoder": str(model_dir)},
        pip_requirements=["embedpipe"],
    )
    out = {"mlflow_model_uri": info.model_uri}
    if registered_name:
        version = mlflow.register_model(info.model_uri, registered_name)
        out.update(registered_name=registered_name, version=str(version.version))
    return out


def write_json_artifact(value: Any, artifact_file: str) -> None:
    """Log a JSON-able value as an artifact of the active run (no-op without one)."""
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_dict(json.loads(json.dumps(value, default=str)), artifact_file)
