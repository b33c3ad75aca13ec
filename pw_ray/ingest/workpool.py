"""Plain Ray tasks over a list of work items, a bounded number in flight, each timed in its worker.

The shard phase of ingest runs here instead of on Ray Data: Ray Data's streaming executor checks
for finished tasks with ``ray.wait(timeout=0.1)`` and only then launches the next, so a worker
idles 0.1–0.2 s between tasks (11–36 % of the shard phase measured by ``bench/ingest_tasks.py``).
Here up to ``in_flight`` tasks are submitted at once: the tasks beyond the cluster's CPUs wait in
Ray's own queue, and a worker that finishes one starts the next at once (Ray reuses its lease), while
the driver blocks in ``ray.wait`` on the completions and tops the queue up — no polling timeout.
The queued tasks are also the pending demand an autoscaler sees on a cluster that starts with no
worker CPUs. Items are submitted in their list order, so an order chosen by the caller (largest
chunk first) is the order they start in.

Each task returns, besides its result, when it started and ended (wall clock, in its worker) and
the CPU seconds it used: :func:`occupancy` turns these into how busy the workers were.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskTime:
    """One task as its worker saw it: ``worker`` (``host:pid``), ``start``/``end`` (Unix seconds,
    the worker's clock) and ``cpu_s`` (CPU seconds of the worker process during the task)."""

    worker: str
    start: float
    end: float
    cpu_s: float


def _timed(fn: Callable, item: Any, args: tuple) -> tuple[Any, TaskTime]:
    """``fn(item, *args)`` with its start, end and CPU time (runs in a Ray worker)."""
    t0, c0 = time.time(), time.process_time()
    out = fn(item, *args)
    return out, TaskTime(f"{socket.gethostname()}:{os.getpid()}", t0, time.time(), time.process_time() - c0)


@dataclass
class PoolRun:
    """What :func:`run_bounded` returns: results and :class:`TaskTime` in the items' order, and
    the driver's Unix seconds at the first submission (``start``) and the last result (``end``)."""

    results: list
    times: list[TaskTime]
    start: float
    end: float

    @property
    def wall_s(self) -> float:
        return self.end - self.start


def run_bounded(fn: Callable, items: Sequence, in_flight: int, *, args: tuple = (), num_cpus: float = 1,
                max_retries: int = 3) -> PoolRun:
    """``fn(item, *args)`` for every item as plain Ray tasks, at most ``in_flight`` submitted at once.

    ``fn`` must be importable by the workers (a module-level function); ``args`` are shared by
    every task and put in the object store once. A task that raises stops the run: the tasks
    still queued are cancelled and the error is raised. ``max_retries`` re-runs a task whose
    worker died (Ray's system failures), not one whose code raised.
    """
    import ray

    if in_flight < 1:
        raise ValueError(f"in_flight must be ≥ 1, got {in_flight}")
    remote = ray.remote(num_cpus=num_cpus, max_retries=max_retries, scheduling_strategy="SPREAD")(_timed)
    shared = ray.put(args)
    results: list = [None] * len(items)
    times: list = [None] * len(items)
    pending: dict = {}
    nxt = 0
    start = time.time()

    def submit() -> None:
        nonlocal nxt
        while nxt < len(items) and len(pending) < in_flight:
            pending[remote.remote(fn, items[nxt], shared)] = nxt
            nxt += 1

    submit()
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)  # blocks until one finishes: no polling
            for ref in done:
                i = pending.pop(ref)
                results[i], times[i] = ray.get(ref)
            submit()
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise
    return PoolRun(results, times, start, time.time())


def occupancy(times: Sequence[TaskTime], slots: int, wall_s: float) -> dict:
    """How busy the workers were: tasks, workers, summed busy (task wall) seconds, task CPU
    seconds, idle seconds between consecutive tasks of a worker (``gaps_s``), and
    ``occupancy`` = busy ÷ (``slots`` × ``wall_s``): 1.0 when ``slots`` workers held a task the
    whole time."""
    by_worker: dict[str, list[TaskTime]] = {}
    for t in times:
        by_worker.setdefault(t.worker, []).append(t)
    busy = sum(t.end - t.start for t in times)
    gaps = 0.0
    for rows in by_worker.values():
        rows.sort(key=lambda t: t.start)
        gaps += sum(max(0.0, b.start - a.end) for a, b in zip(rows, rows[1:]))
    return {"tasks": len(times), "workers": len(by_worker), "busy_s": busy, "cpu_s": sum(t.cpu_s for t in times),
            "gaps_s": gaps, "occupancy": busy / (slots * wall_s) if slots and wall_s > 0 else 0.0}


__all__ = ["TaskTime", "PoolRun", "run_bounded", "occupancy"]
