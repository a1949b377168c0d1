"""The sweep command's progress bar (rich): it moves per epoch (each of a trial's epochs is its
share of the trial) and shows the running trials, from what the driver's recorder hears."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["SweepProgress"]


class SweepProgress:
    def __init__(self, console: Console, name: str):
        self.name = name
        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[last]}"), TextColumn("{task.fields[live]}"), console=console, transient=False,
        )  # fmt: skip
        self.task_id = None
        self.seen: dict[tuple, float] = {}  # (cell, optuna trial) -> share of the trial shown done
        self.live: dict[tuple, str] = {}

    def running(self) -> str:
        shown = list(self.live.values())
        if not shown:
            return ""
        return "| running: " + "; ".join(shown[:3]) + (f" +{len(shown) - 3} more" if len(shown) > 3 else "")

    def on_start(self, todo: int, planned: int) -> None:
        self.bar.start()
        self.task_id = self.bar.add_task(f"sweep {self.name}", total=todo, last=f"{planned - todo} already done",
                                         live="")  # fmt: skip

    def on_epoch(self, info: dict) -> None:
        key = (info["cell"], info["optuna_trial"])
        frac = min(info["epoch"] / max(info["epochs"], 1), 1.0)
        step = max(frac - self.seen.get(key, 0.0), 0.0)
        self.seen[key] = max(frac, self.seen.get(key, 0.0))
        self.live[key] = f"{info['cell']} lr={info['learning_rate']:.2e} ep {info['epoch']}/{info['epochs']}"
        self.bar.update(self.task_id, advance=step, live=self.running())

    def on_done(self, status: str, row: dict) -> None:
        key = (row["cell"], row["optuna_trial"])
        self.live.pop(key, None)
        step = 1.0 - self.seen.pop(key, 0.0)
        task = next(t for t in self.bar.tasks if t.id == self.task_id)
        # a cell left unbracketed takes extra LR trials (sampler.extra_trials): the total grows
        self.bar.update(self.task_id, advance=step, last=f"{row['cell']} lr={row['learning_rate']:.2e} {status}",
                        live=self.running(), total=max(task.total or 0, task.completed + step))  # fmt: skip

    def stop(self) -> None:
        self.bar.stop()
