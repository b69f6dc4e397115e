"""Periodic training checkpoints in a local folder or under ``s3://``, and finding the latest one to resume from.

Layout: ``<checkpoint_dir>/step-00000500/`` (the backend's files + ``trainer_state.json``) and
``<checkpoint_dir>/latest.json`` (``{"step": 500, "name": "step-00000500"}``), written only after the checkpoint
itself is complete, so a run killed while saving resumes from the previous one. On S3 every rank uploads the files
it wrote under ``step-.../rank-R/``; resuming downloads and merges them (file names are unique per rank).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from embedpipe import storage

LATEST = "latest.json"


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def step_name(step: int) -> str:
    return f"step-{step:08d}"


class CheckpointStore:
    def __init__(self, root: str, rank: int = 0, world_size: int = 1, keep: int = 2):
        self.root, self.rank, self.world_size, self.keep = str(root), rank, world_size, keep
        self.remote = storage.is_remote(self.root)

    def latest(self) -> dict | None:
        uri = storage.join(self.root, LATEST) if self.remote else str(Path(self.root) / LATEST)
        try:
            if self.remote:
                return json.loads(storage.read_text(uri))
            return json.loads(Path(uri).read_text()) if Path(uri).is_file() else None
        except storage.IncompleteArtifactError:  # no pointer yet: a fresh run
            return None

    def save(self, step: int, backend, trainer_state: dict) -> str:
        """Every rank calls this (sharded backends write on every rank)."""
        name = step_name(step)
        if self.remote:
            staging = Path(tempfile.mkdtemp(prefix="embedpipe-ckpt-"))
            directory = staging / name
        else:
            directory = Path(self.root) / name
        if self.rank == 0 and directory.exists():
            shutil.rmtree(directory)
        _barrier()
        directory.mkdir(parents=True, exist_ok=True)
        backend.save(directory)
        if self.rank == 0:
            (directory / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
        _barrier()
        if self.remote:
            storage.upload(directory, storage.join(self.root, name, f"rank-{self.rank}"))
            shutil.rmtree(staging, ignore_errors=True)
            _barrier()
        if self.rank == 0:
            pointer = json.dumps({"step": step, "name": name, "world_size": self.world_size})
            if self.remote:
                storage.write_text(storage.join(self.root, LATEST), pointer)
            else:
                tmp = Path(self.root) / f".{LATEST}.tmp"
                tmp.write_text(pointer)
                tmp.replace(Path(self.root) / LATEST)
                self._prune(step)
        _barrier()
        return name

    def _prune(self, step: int) -> None:
        done = sorted(p for p in Path(self.root).glob("step-*") if p.is_dir() and p.name != step_name(step))
        for old in done[: max(0, len(done) - (self.keep - 1))]:
            shutil.rmtree(old, ignore_errors=True)

    def fetch(self, name: str) -> Path:
        """A local folder holding checkpoint ``name`` (downloaded and merged from S3 when remote)."""
        if not self.remote:
            return Path(self.root) / name
        local = Path(tempfile.mkdtemp(prefix="embedpipe-resume-")) / name
        pointer = self.latest() or {}
        for r in range(int(pointer.get("world_size", self.world_size))):
            part = storage.download(storage.join(self.root, name, f"rank-{r}"), local.parent / f"rank-{r}")
            shutil.copytree(part, local, dirs_exist_ok=True)
            shutil.rmtree(part, ignore_errors=True)
        return local
