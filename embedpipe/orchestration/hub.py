"""Hugging Face Hub access for cluster runs: what a recipe needs from the hub, and the one step that fetches it.

:func:`download_plan` lists every hub repository the recipe's steps load -- the base model, the mining teachers, the
SDG generators and consistency teacher, hub datasets of the data build and the MTEB tasks' datasets (at the
revisions mteb pins) -- and :func:`download` fetches them once with ``huggingface_hub.snapshot_download`` into the
model cache (HF_HOME on the cache PVC). The GPU steps then mount the cache and run with ``HF_HUB_OFFLINE=1``.
With ``pipeline.hub.offline`` the cache was filled beforehand: the step only checks that every entry is there
(``local_files_only``) and names the missing ones.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class HubEntry:
    repo_id: str
    repo_type: str  # "model" | "dataset"
    why: str
    revision: str | None = None


def is_hub_id(name: str | None) -> bool:
    """``org/name`` that is not a local path or a URI (packaged names like ``all-minilm-l6-v2`` are not hub ids)."""
    return bool(name) and "://" not in name and bool(_REPO_ID.match(name)) and not Path(name).exists()


def _mteb_datasets(evaluation) -> list[HubEntry]:
    if not evaluation.benchmark and not evaluation.tasks:
        return []
    import mteb

    tasks = list(mteb.get_benchmark(evaluation.benchmark).tasks) if evaluation.benchmark else []
    if evaluation.tasks:
        tasks += list(mteb.get_tasks(tasks=evaluation.tasks))
    out = []
    for task in tasks:
        dataset = task.metadata.dataset or {}
        if dataset.get("path"):
            out.append(HubEntry(dataset["path"], "dataset", f"mteb task {task.metadata.name}", dataset.get("revision")))
    return out


def download_plan(recipe) -> list[HubEntry]:
    """Every hub repository the recipe loads, once each, in a stable order."""
    entries: list[HubEntry] = []
    if is_hub_id(recipe.model.base):
        entries.append(HubEntry(recipe.model.base, "model", "base model"))
    for teacher in recipe.mining.teachers:
        if is_hub_id(teacher.model):
            entries.append(HubEntry(teacher.model, "model", "mining teacher"))
    if recipe.sdg.enabled:
        for generator in recipe.sdg.generators:
            if generator.backend != "openai" and is_hub_id(generator.model):
                entries.append(HubEntry(generator.model, "model", f"SDG generator {generator.name}"))
        if recipe.sdg.consistency_top_k and is_hub_id(recipe.sdg.teacher):
            entries.append(HubEntry(recipe.sdg.teacher, "model", "SDG consistency teacher"))
    for source in recipe.data.sources:
        if source.kind == "hf" and is_hub_id(source.path):
            entries.append(HubEntry(source.path, "dataset", f"data source {source.name}"))
    entries += _mteb_datasets(recipe.evaluation)
    hub = recipe.pipeline.hub
    entries += [HubEntry(r, "model", "pipeline.hub.extra_models") for r in hub.extra_models]
    entries += [HubEntry(r, "dataset", "pipeline.hub.extra_datasets") for r in hub.extra_datasets]
    seen, unique = set(), []
    for entry in entries:
        key = (entry.repo_id, entry.repo_type, entry.revision)
        if key not in seen:
            seen.add(key)
            unique.append(entry)
    return unique


def download(entries: list[HubEntry], cache_dir: str | os.PathLike | None = None, offline: bool = False,
             token: str | None = None) -> dict:
    """Fetch (or, ``offline``, check) every entry into the hub cache; returns ``{"entries": [...], "missing": []}``.

    ``cache_dir`` defaults to huggingface_hub's own (``$HF_HOME/hub``). A missing entry offline, or one the hub
    refuses (gated, unknown), is an error naming the repository and the step that needs it.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    done, missing = [], []
    for entry in entries:
        try:
            path = snapshot_download(entry.repo_id, repo_type=entry.repo_type, revision=entry.revision,
                                     cache_dir=str(cache_dir) if cache_dir else None, local_files_only=offline,
                                     token=token or os.environ.get("HF_TOKEN") or None)
        except (LocalEntryNotFoundError, FileNotFoundError) as err:
            if not offline:
                raise
            log.debug("%s: %s", entry.repo_id, err)
            missing.append(entry)
            continue
        except Exception as err:  # noqa: BLE001 -- the hub's errors are many; each gets the entry's name
            raise RuntimeError(f"downloading {entry.repo_type} {entry.repo_id} ({entry.why}) failed: {err}") from err
        done.append({**asdict(entry), "path": str(path)})
        log.info("hub cache: %s %s -> %s", entry.repo_type, entry.repo_id, path)
    if missing:
        names = ", ".join(f"{e.repo_type} {e.repo_id} ({e.why})" for e in missing)
        raise RuntimeError(f"pipeline.hub.offline: the model cache lacks {len(missing)} of {len(entries)} entries: "
                           f"{names}; fill it first (embedpipe's download step with hub access) or turn offline off")
    return {"entries": done, "missing": [], "offline": offline}
