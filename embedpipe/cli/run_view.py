"""What ``embedpipe run`` shows: a live table of the steps (rich) on a terminal, one plain line per state change
elsewhere (CI logs) or with ``--verbose`` (where every step's own output is shown too); at the end, the merged model
beside the untrained base and the stage-1 model on the same tasks."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence

from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from embedpipe.orchestration.progress import Step

STYLE = {"pending": "dim", "running": "yellow", "done": "green", "failed": "bold red", "cached": "cyan"}
MARK = {"pending": "·", "done": "✓", "failed": "✗", "cached": "↺"}


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 60:
        return f"{value:.1f}s"
    minutes, seconds = divmod(int(value), 60)
    return f"{minutes}m{seconds:02d}s"


class RunView:
    """``on_step`` for :func:`embedpipe.orchestration.local_runner.run_local`; use as a context manager."""

    def __init__(self, console: Console, title: str, live: bool | None = None):
        self.console, self.title = console, title
        self.live = console.is_terminal if live is None else live
        self.steps: Sequence[Step] = ()
        self.started = time.perf_counter()
        self._live: Live | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> RunView:
        if self.live:
            self._live = Live(console=self.console, get_renderable=self.render, refresh_per_second=4,
                              redirect_stdout=False, redirect_stderr=False)  # the run routes those itself
            self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.stop()

    def on_step(self, step: Step, steps: Sequence[Step]) -> None:
        with self._lock:
            self.steps = list(steps)
            if not self.live:
                self.console.print(self.line(step), highlight=False, soft_wrap=True)

    def line(self, step: Step) -> Text:
        """The plain line for a state change: ``01:02:03 stage 1  done  12.3s  loss 0.4321 (2 steps)``."""
        text = Text(time.strftime("%H:%M:%S "))
        text.append(f"{step.label:<28} ", style="bold")
        text.append(f"{step.state:<8}", style=STYLE[step.state])
        if step.state != "running":
            text.append(f" {_seconds(step.seconds):>7}")
        if step.figure:
            text.append(f"  {step.figure}")
        if step.state == "failed":
            text.append(f"  log: {step.log}", style="red")
        return text

    def render(self) -> Table:
        now = time.perf_counter()
        with self._lock:
            steps = list(self.steps)
        done = sum(s.state in ("done", "cached") for s in steps)
        table = Table(title=f"{self.title}  {done}/{len(steps)} steps  {_seconds(now - self.started)}",
                      title_justify="left", box=None, pad_edge=False, show_header=False)
        table.add_column(width=2)
        table.add_column(style="bold", no_wrap=True)
        table.add_column(width=8)
        table.add_column(justify="right", width=8)
        table.add_column(overflow="fold")
        for step in steps:
            mark = Spinner("dots", style="yellow") if step.state == "running" else Text(MARK[step.state],
                                                                                          style=STYLE[step.state])
            table.add_row(mark, Text(step.label, style="dim" if step.state == "pending" else ""),
                          Text(step.state, style=STYLE[step.state]), _seconds(step.elapsed(now)), step.figure)
        return table


def failure(console: Console, step: Step, lines: list[str]) -> None:
    """A failed step: its name, time, the end of its log and the log's path."""
    console.print(f"[bold red]step {step.label!r} failed[/] after {_seconds(step.seconds)}")
    if lines:
        console.print(Text("\n".join(f"  {line}" for line in lines), style="dim"), highlight=False)
    console.print(f"full log: {step.log}", highlight=False, soft_wrap=True)


MODELS = (("base", "base"), ("stage1", "stage 1"), ("merged", "merged"))


def _fmt(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _delta(new: float | None, old: float | None) -> Text:
    if new is None or old is None or math.isnan(new) or math.isnan(old):
        return Text("")
    diff = new - old
    return Text(f"{diff:+.4f}", style="green" if diff > 0 else ("red" if diff < 0 else ""))


def comparison_table(scores: dict[str, dict]) -> Table | None:
    """The merged model beside the untrained base and the stage-1 model: per task and Mean(Task) /
    Mean(TaskType), with merged - base and merged - stage 1. ``scores``: ``{"base"|"stage1"|"merged": evaluation
    summary}``; None without the merged model's and at least one other's."""
    have = [(key, title) for key, title in MODELS if key in scores]
    if "merged" not in scores or len(have) < 2:
        return None
    table = Table(title="MTEB scores on the same tasks (base: untrained)", title_justify="left")
    table.add_column("task", no_wrap=True)
    for _, title in have:
        table.add_column(title, justify="right")
    others = [key for key, _ in have if key != "merged"]
    for key in others:
        table.add_column(f"Δ vs {dict(MODELS)[key]}", justify="right")
    tasks = sorted({t for s in scores.values() for t in s.get("scores", {})})
    rows = [(task, {k: scores[k].get("scores", {}).get(task) for k, _ in have}) for task in tasks]
    rows += [(label, {k: scores[k].get(field) for k, _ in have})
             for label, field in (("Mean(Task)", "mean_task"), ("Mean(TaskType)", "mean_task_type"))]
    for i, (name, values) in enumerate(rows):
        table.add_row(Text(name, style="bold" if i >= len(tasks) else ""), *[_fmt(values[k]) for k, _ in have],
                      *[_delta(values["merged"], values[k]) for k in others], end_section=i == len(tasks) - 1)
    return table


def evaluations(steps: Sequence[dict]) -> dict[str, dict]:
    """The evaluation summaries of the base, stage-1 and merged models among a run's steps (``run_local``'s
    ``steps``), by the evaluation step's label (embedpipe.pipelines.full.EVALUATED)."""
    from embedpipe.pipelines.full import EVALUATED

    out = {}
    for step in steps:
        for key, label in EVALUATED.items():
            if step["label"] == label and step.get("summary"):
                out[key] = step["summary"]
    return out

