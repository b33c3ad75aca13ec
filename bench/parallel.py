"""Parallel efficiency of a phase of tasks, measured so that other load on the machine does not decide it.

Parallel efficiency is chips/s on N cores ÷ (N × one-process chips/s). On an idle machine the
wall clock gives it directly (``wall_efficiency``). On a machine shared with other work (a load
average of 30–50 on 2 cores is common where these benches run) wall seconds mostly measure the
other work, so the benches also compute it from CPU seconds and task times
(``cpu_efficiency``), side by side in one run:

* ``one_cpu_s``: CPU seconds the one-process loop used per chip (``time.process_time``).
* Each task records its start, end and CPU seconds in its worker
  (:class:`pw_ray.ingest.workpool.TaskTime`). The tasks are laid out on N slots (interval
  partitioning: a task goes to the slot that freed up last before it started) and each slot is
  **replayed at idle-machine speed**: its tasks take their CPU seconds, the idle time before its
  first task and between its tasks is kept as measured in wall seconds. The slowest slot, plus
  the wait from the last task's end to the driver's last result, is the replayed phase. Idle
  time measured on a loaded machine is, if anything, longer than on an idle one, so the estimate
  errs low.
* The replayed phase can be no shorter than all the CPU the phase used — tasks, plus the driver,
  the raylet, GCS and every other process under the benchmark (``overhead_cpu_s``) — spread
  over N cores: on N cores these compete with the workers. Ray's daemons also use CPU at a
  steady rate while nothing runs (``background_cpu_per_s``, measured in a sleep just before the
  phase); that part grows with the wall time other load stretches, so it is counted for the
  replayed length, not the measured one.

``cpu_efficiency`` = chips × ``one_cpu_s`` ÷ (N × replayed phase seconds). On an idle machine
with CPU-bound tasks it equals the wall-clock figure; a plain process pool over the same tasks,
measured the same way in the same run, is the reference (it has no scheduler between tasks).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Sequence

from bench.proctree import tree_cpu_s


def slots(times: Sequence, n: int) -> list[list]:
    """Tasks laid out on ``n`` slots in start order: each goes to the slot whose last task ended
    latest before it started (or, if none has ended, to the one that ends first)."""
    lanes: list[list] = [[] for _ in range(n)]
    for t in sorted(times, key=lambda t: t.start):
        free = [k for k in range(n) if not lanes[k] or lanes[k][-1].end <= t.start]
        if free:
            k = max(free, key=lambda k: lanes[k][-1].end if lanes[k] else float("-inf"))
        else:
            k = min(range(n), key=lambda k: lanes[k][-1].end)
        lanes[k].append(t)
    return lanes


@dataclass
class Efficiency:
    chips: int
    cores: int
    wall_s: float
    replay_s: float
    task_cpu_s: float
    overhead_cpu_s: float
    idle_s: float
    occupancy: float
    wall_efficiency: float
    cpu_efficiency: float

    def row(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def replay_seconds(times: Sequence, cores: int, start: float, end: float, overhead_cpu_s: float,
                   background_cpu_per_s: float = 0.0) -> tuple[float, float]:
    """(replayed phase seconds, idle seconds on the slots) of a phase of tasks on ``cores`` slots
    (see the module docstring); ``start``/``end``: the driver's Unix seconds around the phase.

    ``background_cpu_per_s``: CPU seconds per wall second the run's processes use with no task
    running (Ray's daemons polling, heartbeats), measured just before the phase. That part of
    ``overhead_cpu_s`` grows with the phase's wall time, which other load stretches, so it is
    counted at the replayed length instead of the measured one.
    """
    replay, idle = 0.0, 0.0
    for lane in slots(times, cores):
        if not lane:
            continue
        gaps = [max(0.0, lane[0].start - start)] + [max(0.0, b.start - a.end) for a, b in zip(lane, lane[1:])]
        idle += sum(gaps)
        replay = max(replay, sum(t.cpu_s for t in lane) + sum(gaps))
    replay += max(0.0, end - max(t.end for t in times))
    task_cpu = sum(t.cpu_s for t in times)
    rate = min(max(0.0, background_cpu_per_s), 0.5 * cores)
    work_overhead = max(0.0, overhead_cpu_s - rate * (end - start))
    return max(replay, (task_cpu + work_overhead) / (cores - rate)), idle


def efficiency(chips: int, cores: int, one_cpu_s: float, one_wall_s: float, times: Sequence, start: float,
               end: float, overhead_cpu_s: float, background_cpu_per_s: float = 0.0) -> Efficiency:
    """Parallel efficiency of a phase of tasks (see the module docstring).

    ``one_cpu_s`` / ``one_wall_s``: CPU and wall seconds per chip of the one-process loop;
    ``times``: the tasks' :class:`~pw_ray.ingest.workpool.TaskTime`; ``start``/``end``: the
    driver's Unix seconds around the phase; ``overhead_cpu_s``: CPU seconds of every process of
    the run beyond the tasks' own; ``background_cpu_per_s``: see :func:`replay_seconds`.
    """
    replay, idle = replay_seconds(times, cores, start, end, overhead_cpu_s, background_cpu_per_s)
    task_cpu = sum(t.cpu_s for t in times)
    wall = end - start
    busy = sum(t.end - t.start for t in times)
    return Efficiency(chips, cores, wall, replay, task_cpu, overhead_cpu_s, idle, busy / (cores * wall),
                      chips * one_wall_s / (cores * wall), chips * one_cpu_s / (cores * replay))


def background_cpu_per_s(seconds: float = 3.0) -> float:
    """CPU seconds per second this process and everything under it use while idle (a sleep)."""
    t0, c0 = time.time(), tree_cpu_s()
    time.sleep(seconds)
    return (tree_cpu_s() - c0) / (time.time() - t0)


class CpuSampler:
    """Samples :func:`tree_cpu_s` every ``interval_s`` in a thread during a ``with`` block;
    :meth:`between` gives the CPU seconds used between two Unix times inside it (linear between
    samples), e.g. a phase whose bounds are known only afterwards."""

    def __init__(self, interval_s: float = 0.2):
        self.interval_s, self.samples, self._stop = interval_s, [], threading.Event()

    def __enter__(self):
        self.samples.append((time.time(), tree_cpu_s()))
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval_s):
            self.samples.append((time.time(), tree_cpu_s()))

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.samples.append((time.time(), tree_cpu_s()))

    def at(self, t: float) -> float:
        import numpy as np

        ts, cs = zip(*self.samples)
        return float(np.interp(t, ts, cs))

    def between(self, t0: float, t1: float) -> float:
        return self.at(t1) - self.at(t0)


class CpuMeter:
    """CPU seconds of this process and everything under it during a ``with`` block."""

    def __enter__(self):
        self.t0, self.cpu0 = time.time(), tree_cpu_s()
        return self

    def __exit__(self, *exc):
        self.cpu_s = tree_cpu_s() - self.cpu0
        self.t1 = time.time()


def process_pool(fn, items: Sequence, args: tuple, cores: int):
    """``fn(item, *args)`` for every item on a plain process pool of ``cores`` workers (spawned,
    started and warmed before the clock starts), each task timed like a Ray one. Returns
    (results, :class:`TaskTime` list, start, end, CPU seconds of the pool's workers and this
    process during the phase beyond the tasks')."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from pw_ray.ingest.workpool import _timed

    with ProcessPoolExecutor(cores, mp_context=mp.get_context("spawn")) as pool:
        list(pool.map(_warm, range(cores * 4)))  # start every worker, import the readers
        pids = list(pool._processes)  # the workers (private, but the only way to name them)
        cpu0 = sum(tree_cpu_s(p) for p in pids) + time.process_time()
        start = time.time()
        futs = [pool.submit(_timed, fn, item, args) for item in items]
        out = [f.result() for f in futs]
        end = time.time()
        cpu = sum(tree_cpu_s(p) for p in pids) + time.process_time() - cpu0
    results = [o[0] for o in out]
    times = [o[1] for o in out]
    return results, times, start, end, cpu - sum(t.cpu_s for t in times)


def _warm(_):
    import rasterio  # noqa: F401

    import pw_ray.ingest.pipeline  # noqa: F401
    time.sleep(0.05)
    return os.getpid()
