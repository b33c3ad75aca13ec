"""Console progress of the evaluation grid: cells done / total and an ETA, as a Tune callback.

``evaluate: cells 37/224 (3 reused), ETA 1m12s — last europe__landcover__eu__knn__s0 0.81``

A line when the first cell finishes, then at most one every 10 s, and one when the last does.

"Done" counts every cell with a stored result (``runs/cells/<cell>.json``), including those
finished by an earlier, interrupted run: they are counted when the grid starts, so a resumed
grid starts at, say, 120/224 rather than 0. The ETA is the remaining cells times the wall time
per cell finished *in this run* (so it reflects the concurrency actually achieved).

Tune pickles the callback with the experiment; :meth:`setup` runs again when a restored grid
starts, recounting from storage, so the numbers stay right across restores.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ray.tune import Callback

from pw_ray import storage

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """``75.4`` → ``1m15s``; ``3725`` → ``1h02m``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def progress_line(done: int, total: int, finished_here: int, elapsed_s: float, reused: int = 0) -> str:
    """``cells 37/224 (3 reused), ETA 1m12s``; no ETA before the first cell finished in this run."""
    head = f"cells {done}/{total}" + (f" ({reused} reused)" if reused else "")
    if done >= total:
        return f"{head}, done in {format_duration(elapsed_s)}"
    if finished_here <= 0:
        return f"{head}, ETA unknown"
    return f"{head}, ETA {format_duration(elapsed_s / finished_here * (total - done))}"


class GridProgress(Callback):
    """Logs ``cells done/total, ETA`` as trials finish (driver side, ``pw_ray`` logger): the first
    finished cell, then at most one line every ``every_s`` seconds, and the last; the lines in
    between go to DEBUG (a grid of thousands of cells is not thousands of console lines)."""

    def __init__(self, root: str, cell_ids: list[str], cell_name: Callable[[dict], str], every_s: float = 10.0):
        """``cell_ids``: the grid's cells by name; ``cell_name``: a trial's ``config["cell"]`` → that name
        (the grid's naming stays in ``grid.py``; a module-level function, so Tune can pickle it)."""
        self.root = root
        self.cell_ids = list(cell_ids)
        self.cell_name = cell_name
        self.every_s = every_s
        self._reset()

    def _reset(self) -> None:
        self.t0 = time.monotonic()
        self.last_shown: float | None = None
        self.reused = 0
        self.finished_here = 0
        self.done_ids: set[str] = set()

    def _stored(self) -> set[str]:
        cells = storage.join(self.root, "runs", "cells")
        names = {u.rsplit("/", 1)[-1].removesuffix(".json") for u in storage.listdir(cells, suffix=".json")}
        return names & set(self.cell_ids)

    def setup(self, **info) -> None:
        self._reset()
        self.done_ids = self._stored()
        self.reused = len(self.done_ids)
        log.info("evaluate: %s", progress_line(len(self.done_ids), len(self.cell_ids), 0, 0.0, self.reused))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        cell = self.cell_name(trial.config["cell"])
        result = trial.last_result or {}
        if cell not in self.done_ids:
            self.done_ids.add(cell)
            if not result.get("reused"):
                self.finished_here += 1
        score = result.get("score")
        last = f" — last {cell}" + (f" {score:.3f}" if isinstance(score, float) and score != -1.0 else "")
        now = time.monotonic()
        # getattr: a callback pickled by an older pw-ray (a grid restored after an upgrade) has no every_s
        show = (self.last_shown is None or now - self.last_shown >= getattr(self, "every_s", 10.0)
                or len(self.done_ids) >= len(self.cell_ids))
        if show:
            self.last_shown = now
        log.log(logging.INFO if show else logging.DEBUG, "evaluate: %s%s",
                progress_line(len(self.done_ids), len(self.cell_ids), self.finished_here, now - self.t0,
                              self.reused), last)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        log.warning("evaluate: cell %s failed (Tune retries it up to its failure limit; a rerun of "
                    "`pw-ray evaluate` resumes it)", self.cell_name(trial.config["cell"]))
