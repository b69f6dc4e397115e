"""Each step of a kfp.local run as it happens: its state, time and key figure, and its output in a log file of its own.

kfp.local runs the pipeline's tasks from this process: ``task_executor.execute_single_task`` for every task (cache
lookup, retries, then ``task_dispatcher.run_single_task_implementation`` to start it), in threads for a ParallelFor.
Both runners copy the task's output to this process's stdout line by line from that thread (SubprocessRunner:
``print`` of each line of the child's merged stdout/stderr; DockerRunner: ``print`` of each line of the container's
log), and kfp's own lines about the task go through ``logging`` to stdout too. So while a :class:`StepWatcher` is
active:

- the two kfp functions are wrapped (as embedpipe.orchestration.containers replaces the Docker handler's
  ``run_docker_container``), which tells which task a thread runs, when it starts and ends, and whether it came from
  kfp's cache (``execute_single_task`` returned without starting it);
- ``sys.stdout`` / ``sys.stderr`` are replaced by a router that writes each thread's text to the log file of the task
  that thread runs (``<work folder>/<run>/logs/<step>.log``; text outside any task to ``logs/pipeline.log``), and to
  the real stdout only when ``echo`` is set (``embedpipe run --verbose``).

Every state change calls ``on_change(step, steps)`` (``steps``: all of them, in order); :class:`Step` carries the
typed summary (embedpipe.orchestration.summaries) the task returned.
"""

from __future__ import annotations

import io
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from embedpipe.orchestration import summaries

STATES = ("pending", "running", "done", "failed", "cached")


@dataclass
class Step:
    key: str  # unique in the run: the loop iterations' path and the task name ("for-loop-2-iteration-0/train-stage2")
    task: str  # KFP's task name ("train-stage2")
    component: str  # its component ("comp-train-stage2")
    label: str  # what a person reads: the display name, with the iteration ("stage 2 #1")
    state: str = "pending"
    started: float | None = None
    seconds: float | None = None
    summary: summaries.StepSummary | None = None
    log: Path | None = None
    note: str = ""  # why the figure is missing (an output that did not read as its summary)
    output: Any = None  # the task's ``Output`` parameter as KFP returned it (the tracking step's is the run's result)

    @property
    def figure(self) -> str:
        if self.summary is not None:
            return self.summary.figure()
        return self.note

    def elapsed(self, now: float | None = None) -> float | None:
        if self.seconds is not None:
            return self.seconds
        return (now or time.perf_counter()) - self.started if self.started is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "task": self.task, "label": self.label, "state": self.state,
                "seconds": None if self.seconds is None else round(self.seconds, 2), "figure": self.figure,
                "log": str(self.log) if self.log else None,
                "summary": self.summary.model_dump(mode="json") if self.summary is not None else None}


_ITERATION = re.compile(r"-iteration-(\d+)$")


def _placeholder(key: str) -> str:
    """The key of the pipeline's task a step belongs to: its loop iterations' numbers dropped."""
    return "/".join(_ITERATION.sub("", part) for part in key.split("/"))


def planned_steps(spec: dict) -> list[Step]:
    """The pipeline's tasks as pending steps, in an order that respects their dependencies (a ParallelFor's body
    once: its iterations replace it as they start). ``spec``: the pipeline spec as a dict (IR YAML / JSON)."""
    components = spec.get("components", {})
    out: list[Step] = []

    def walk(dag: dict, prefix: str) -> None:
        tasks = dag.get("tasks", {})
        deps = {n: [d for d in t.get("dependentTasks", []) if d in tasks] for n, t in tasks.items()}
        users: dict[str, list[str]] = {n: [] for n in tasks}
        for name, before in deps.items():
            for dep in before:
                users[dep].append(name)
        height: dict[str, int] = {}

        def reach(name: str, seen: frozenset = frozenset()) -> int:  # the longest chain of steps still to come
            if name not in height:
                height[name] = 1 + max((reach(u, seen | {name}) for u in users[name] if u not in seen), default=0)
            return height[name]

        done: set[str] = set()
        order: list[str] = []
        # dependencies first; of the ready ones the longest chain first, so the main line reads top to bottom
        while len(order) < len(tasks):
            ready = [n for n in tasks if n not in done and all(d in done for d in deps[n])]
            if not ready:  # a cycle cannot compile; keep the rest in name order
                ready = sorted(set(tasks) - done)
            name = min(ready, key=lambda n: (-reach(n), n))
            done.add(name)
            order.append(name)
        for name in order:
            task = tasks[name]
            ref = task.get("componentRef", {}).get("name", "")
            body = components.get(ref, {}).get("dag")
            if body is not None:  # an exit handler's group runs its steps in place (no path of its own)
                walk(body, prefix if name.startswith("exit-handler") else f"{prefix}{name}/")
            else:
                label = task.get("taskInfo", {}).get("name") or name
                out.append(Step(key=f"{prefix}{name}", task=name, component=ref, label=label))

    walk(spec.get("root", {}).get("dag", {}), "")
    return out


class _Router(io.TextIOBase):
    """A stdout/stderr stand-in: each thread's text goes to its task's log (or the pipeline log), and to ``echo``."""

    def __init__(self, watcher: StepWatcher, real: TextIO):
        self.watcher, self.real = watcher, real

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:  # a child's progress bars are for a log file, not a terminal
        return False

    @property
    def encoding(self) -> str:
        return getattr(self.real, "encoding", "utf-8")

    def fileno(self) -> int:  # libraries that write to the descriptor reach the real stream
        return self.real.fileno()

    def write(self, text: str) -> int:
        self.watcher._write(text)
        if self.watcher.echo is not None:
            self.watcher.echo.write(text)
        return len(text)

    def flush(self) -> None:
        if self.watcher.echo is not None:
            self.watcher.echo.flush()


class StepWatcher:
    """While active (``with``), follows every task of a kfp.local run; see the module docstring.

    ``spec``: the pipeline spec (dict) for the pending steps; ``pipeline_root``: kfp.local's pipeline root, under
    which each run's folder gets ``logs/``; ``echo``: where to copy all output as well (None: nowhere)."""

    def __init__(self, spec: dict, pipeline_root: str | Path,
                 on_change: Callable[[Step, list[Step]], None] | None = None, echo: TextIO | None = None):
        self.steps: list[Step] = planned_steps(spec)
        self.root = Path(pipeline_root)
        self.on_change = on_change or (lambda step, steps: None)
        self.echo = echo
        self.run_folder: Path | None = None
        self._lock = threading.RLock()
        self._local = threading.local()
        self._files: dict[str, TextIO] = {}
        self._early: list[str] = []  # pipeline-level text before the run's folder is known

    # -- the kfp hooks ---------------------------------------------------------------------------------------------
    def __enter__(self) -> StepWatcher:
        from kfp.local import task_dispatcher
        from kfp.local.orchestrator import task_executor

        self._saved = (task_executor.execute_single_task, task_dispatcher.run_single_task_implementation,
                       sys.stdout, sys.stderr)
        execute, dispatch = self._saved[:2]

        def execute_single_task(*args, **kwargs):
            task_name = kwargs.get("task_name", args[0] if args else "")
            task_spec = kwargs.get("task_spec", args[1] if len(args) > 1 else None)
            resource = kwargs.get("pipeline_resource_name", args[2] if len(args) > 2 else "")
            step = self._start(task_name, task_spec, resource)
            self._local.step, self._local.dispatched = step, False
            try:
                outputs, status = execute(*args, **kwargs)
            except BaseException:
                self._finish(step, "failed", None)
                raise
            finally:
                dispatched = self._local.dispatched
                self._local.step = None
            state = "failed" if status.name == "FAILURE" else ("done" if dispatched else "cached")
            self._finish(step, state, outputs)
            return outputs, status

        def run_single_task_implementation(*args, **kwargs):
            self._local.dispatched = True
            return dispatch(*args, **kwargs)

        task_executor.execute_single_task = execute_single_task
        task_dispatcher.run_single_task_implementation = run_single_task_implementation
        sys.stdout = _Router(self, self._saved[2])
        sys.stderr = _Router(self, self._saved[3])
        return self

    def __exit__(self, *exc) -> None:
        from kfp.local import task_dispatcher
        from kfp.local.orchestrator import task_executor

        task_executor.execute_single_task, task_dispatcher.run_single_task_implementation = self._saved[:2]
        sys.stdout, sys.stderr = self._saved[2:]
        with self._lock:
            if self._early:
                self._pipeline_log().write("".join(self._early))
                self._early.clear()
            for handle in self._files.values():
                handle.close()
            self._files.clear()

    # -- steps -----------------------------------------------------------------------------------------------------
    def _start(self, task_name: str, task_spec, resource: str) -> Step:
        run, _, nested = resource.partition("/")
        key = f"{nested}/{task_name}" if nested else task_name
        iterations = [int(m.group(1)) for part in nested.split("/") if (m := _ITERATION.search(part))]
        with self._lock:
            if self.run_folder is None:
                self.run_folder = self.root / run
            label = (task_spec.task_info.name if task_spec is not None and task_spec.task_info.name else task_name)
            if iterations:
                label += " #" + ".".join(str(i + 1) for i in iterations)
            component = task_spec.component_ref.name if task_spec is not None else ""
            step = Step(key=key, task=task_name, component=component, label=label, state="running",
                        started=time.perf_counter(), log=self._log_path(key))
            self._place(step)
        self.on_change(step, self.steps)
        return step

    def _place(self, step: Step) -> None:
        group = _placeholder(step.key)
        for i, other in enumerate(self.steps):
            if other.key == step.key or (other.key == group and other.state == "pending"):
                self.steps[i] = step
                return
        last = max((i for i, other in enumerate(self.steps) if _placeholder(other.key) == group), default=None)
        self.steps.insert(len(self.steps) if last is None else last + 1, step)

    def _finish(self, step: Step, state: str, outputs: dict | None) -> None:
        step.seconds = time.perf_counter() - (step.started or time.perf_counter())
        if outputs and "Output" in outputs:
            step.output = outputs["Output"]
            try:
                step.summary = summaries.read_output(step.component, outputs["Output"])
            except (ValueError, TypeError) as err:  # a summary that does not read: said in the view, not fatal
                step.note = f"unreadable summary: {err}"
        step.state = state
        with self._lock:
            handle = self._files.pop(step.key, None)
            if handle is not None:
                handle.close()
        self.on_change(step, self.steps)

    # -- logs ------------------------------------------------------------------------------------------------------
    def _log_path(self, key: str) -> Path:
        return self.run_folder / "logs" / (key.replace("/", ".") + ".log")

    def _pipeline_log(self) -> TextIO:
        handle = self._files.get("")
        if handle is None:
            folder = self.run_folder or self.root
            (folder / "logs").mkdir(parents=True, exist_ok=True)
            handle = self._files[""] = open(folder / "logs" / "pipeline.log", "a", encoding="utf-8")
        return handle

    def _write(self, text: str) -> None:
        step = getattr(self._local, "step", None)
        with self._lock:
            if step is None:
                if self.run_folder is None:
                    self._early.append(text)
                    return
                handle = self._pipeline_log()
                if self._early:
                    handle.write("".join(self._early))
                    self._early.clear()
            else:
                handle = self._files.get(step.key)
                if handle is None:
                    step.log.parent.mkdir(parents=True, exist_ok=True)
                    handle = self._files[step.key] = open(step.log, "a", encoding="utf-8")
            handle.write(text)
            handle.flush()

    def output_of(self, component: str) -> Any:
        """The ``Output`` of the last finished step of ``component`` (``comp-track-full``), None if none ran."""
        done = [s for s in self.steps if s.component == component and s.output is not None]
        return done[-1].output if done else None

    def failed(self) -> list[Step]:
        return [s for s in self.steps if s.state == "failed"]


class StepFailed(RuntimeError):
    """A step of the run failed: ``step`` (its label, time and log file)."""

    def __init__(self, step: Step, message: str):
        super().__init__(f"step {step.label!r} failed after {step.seconds or 0:.1f}s ({message}); "
                         f"full log: {step.log}")
        self.step = step


def tail(path: Path | None, lines: int = 20) -> list[str]:
    """The last ``lines`` lines of a step's log (for the failure message)."""
    if path is None or not Path(path).is_file():
        return []
    return Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
