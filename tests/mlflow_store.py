"""Reading an MLflow store after a pipeline run, for tests (the tracking tests, the end-to-end pipeline tests).

    store = PipelineStore.load(tracking_uri, "embedpipe-tiny")      # exactly one parent run, else AssertionError
    store.training("stage2/mix-a")                                 # that job's child run
    store.assert_logged_while_training(before_ms=track_started)    # every training child's metrics predate that
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PipelineStore:
    """One pipeline run's parent, its training children (by job key) and its cell children (by cell name)."""

    client: object
    experiment_id: str
    parent: object
    trainings: dict = field(default_factory=dict)
    cells: dict = field(default_factory=dict)
    others: list = field(default_factory=list)

    @classmethod
    def load(cls, tracking_uri: str, experiment: str, parent_run_id: str | None = None) -> "PipelineStore":
        """The store's one pipeline parent (or the given one), with its children sorted by kind."""
        import mlflow

        from embedpipe import tracking

        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        assert exp is not None, f"no experiment {experiment!r} at {tracking_uri}"
        if parent_run_id is None:
            parents = client.search_runs([exp.experiment_id], f"tags.`{tracking.KIND_TAG}` = 'pipeline'")
            assert len(parents) == 1, f"{len(parents)} pipeline parent runs in {experiment}: " \
                                      f"{[p.info.run_name for p in parents]}"
            parent = parents[0]
        else:
            parent = client.get_run(parent_run_id)
        store = cls(client, exp.experiment_id, parent)
        runs = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  max_results=5000)
        for run in runs:
            kind = run.data.tags.get(tracking.KIND_TAG)
            if kind == "training":
                job = run.data.tags[tracking.JOB_TAG]
                assert job not in store.trainings, f"two child runs for training job {job!r}"
                store.trainings[job] = run
            elif kind == "cell":
                store.cells[run.data.tags[tracking.CELL_TAG]] = run
            else:
                store.others.append(run)
        return store

    def training(self, job: str):
        assert job in self.trainings, f"no child run for training job {job!r}; have {sorted(self.trainings)}"
        return self.trainings[job]

    def history(self, run, metric: str) -> list:
        return self.client.get_metric_history(run.info.run_id, metric)

    def assert_trained_live(self, job: str, stage: str, steps: int, before_ms: int,
                            names=("loss", "lr", "grad_norm", "tokens_per_s")) -> None:
        """The job's child has one value per step of each training metric, every one logged before ``before_ms``
        (the time the tracking step started): logged while it trained, not copied in at the end."""
        run = self.training(job)
        assert run.data.tags.get("embedpipe.cached") != "true", f"{job}: recorded from a cached summary"
        for name in names:
            history = self.history(run, f"{stage}.{name}")
            assert len(history) == steps, f"{job}: {len(history)} values of {stage}.{name}, expected {steps}"
            late = [m for m in history if m.timestamp >= before_ms]
            assert not late, f"{job}: {stage}.{name} logged at {late[0].timestamp} >= {before_ms}"
