"""A benchmark's process tree, from Linux ``/proc``: CPU-seconds and memory of a process and every
process under it (with a local Ray: the GCS, the raylet and the workers under the driver).

CPU-seconds, unlike wall time, do not grow when other work shares the machine, so the benchmarks
compare ways of doing the same work by the CPU their whole tree spent. One reader of ``/proc``
for all of them (``bench/parallel.py``, ``scale.py``, ``analyze.py``, ``loader.py``, ``ingest.py``,
``ingest_sets.py``, ``odc_peer.py``).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

TICK = os.sysconf("SC_CLK_TCK")
PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    name: str
    start: str  # clock ticks after boot: with the pid, names a process even when pids are reused
    cpu_s: float  # user + system of the process itself
    reaped_cpu_s: float  # user + system of its children that ended and were waited for
    rss_mb: float


def _read(pid: str) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None  # ended meanwhile
    name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
    # after "(comm)", which may hold spaces: state ppid … utime(11) stime(12) cutime(13) cstime(14) … start(19)
    return Proc(int(pid), int(rest[1]), name, rest[19], (int(rest[11]) + int(rest[12])) / TICK,
                (int(rest[13]) + int(rest[14])) / TICK, pages * PAGE_MB)


def snapshot(root_pid: int | None = None) -> dict[int, Proc]:
    """The live processes of the tree under ``root_pid`` (default: this process), by pid."""
    root_pid = root_pid or os.getpid()
    procs = [p for d in os.listdir("/proc") if d.isdigit() and (p := _read(d))]
    children: dict[int, list[Proc]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p)
    out = {p.pid: p for p in procs if p.pid == root_pid}
    todo = list(out)
    while todo:
        for c in children.get(todo.pop(), []):
            if c.pid not in out:
                out[c.pid] = c
                todo.append(c.pid)
    return out


def tree_cpu_s(root_pid: int | None = None, reaped: bool = False) -> float:
    """CPU-seconds used so far by the live processes of the tree; ``reaped``: plus what their
    ended children used (processes that ended unwaited-for are not counted either way)."""
    return sum(p.cpu_s + (p.reaped_cpu_s if reaped else 0.0) for p in snapshot(root_pid).values())


def cpu_between(before: dict[int, Proc], after: dict[int, Proc], reaped: bool = True) -> dict[int, float]:
    """CPU-seconds each process of ``after`` spent since ``before`` (a process new in ``after``,
    or a reused pid, counts from zero)."""
    out = {}
    for pid, p in after.items():
        was = before.get(pid)
        now = p.cpu_s + (p.reaped_cpu_s if reaped else 0.0)
        out[pid] = now - ((was.cpu_s + (was.reaped_cpu_s if reaped else 0.0)) if was and was.start == p.start else 0.0)
    return out


def tree_rss_mb(root_pid: int | None = None) -> float:
    """Summed resident memory (MB) of the tree (shared pages count once per process)."""
    return sum(p.rss_mb for p in snapshot(root_pid).values())


class PeakRss:
    """``with PeakRss() as m: …`` then ``m.peak``: the tree's largest summed RSS (MB), sampled."""

    def __init__(self, interval_s: float = 0.1, root_pid: int | None = None):
        self.interval_s, self.root_pid, self.peak, self._stop = interval_s, root_pid, 0.0, threading.Event()

    def __enter__(self):
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_mb(self.root_pid))
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
