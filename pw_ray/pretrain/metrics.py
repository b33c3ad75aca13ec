"""Training metrics as TensorBoard event files under the run dir, and a reader for them.

Rank 0 of a pretraining run writes ``<root>/runs/pretrain/<set>/<run>/tensorboard/events.out.tfevents.*``
(one file per worker-group start, so a resumed or restarted run adds a file; the steps
continue). ``tensorboard --logdir <root>/runs/pretrain`` shows every set side by side.

TensorBoard's writer needs a local folder: for a remote root (``s3://``, ``gs://``) the
events are written to a local temporary folder and copied to the run dir whenever
:meth:`MetricsLog.sync` is called (at each checkpoint and at the end).
"""

from __future__ import annotations

import logging
import os
import resource
import tempfile
from dataclasses import dataclass

from pw_ray import storage

log = logging.getLogger(__name__)

TB_DIR = "tensorboard"


def peak_rss_mb() -> float:
    """This process's peak resident memory, MiB (Linux reports ``ru_maxrss`` in KiB).

    In a Ray worker this includes the object store's shared memory the process has mapped:
    every block it read from the store counts, although the store (one per node) owns it.
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def heap_mb() -> float:
    """This process's private resident memory now, MiB: RSS minus shared (``RssAnon``).

    What Ray calls a worker's heap (RSS − SHR): the memory the process itself holds, without
    the object store's pages and the shared libraries that RSS counts. Where
    ``/proc/self/status`` is missing (not Linux) it falls back to :func:`peak_rss_mb`, an upper bound.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return peak_rss_mb()


class MetricsLog:
    """Scalars → TensorBoard events in ``log_uri`` (a local path or a remote URI)."""

    def __init__(self, log_uri: str):
        from torch.utils.tensorboard import SummaryWriter

        self.log_uri = log_uri
        self.remote = storage.is_remote(log_uri)
        self.local_dir = tempfile.mkdtemp(prefix="pwray-tb-") if self.remote else storage.local_path(log_uri)
        os.makedirs(self.local_dir, exist_ok=True)
        self.writer = SummaryWriter(self.local_dir)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        """One point per scalar at ``step``; flushed at once, so a killed worker loses nothing logged."""
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def sync(self) -> None:
        """Copy the local event files to a remote run dir (no-op for a local one)."""
        if not self.remote:
            return
        self.writer.flush()
        for name in sorted(os.listdir(self.local_dir)):
            with open(os.path.join(self.local_dir, name), "rb") as f:
                storage.write_bytes(storage.join(self.log_uri, name), f.read())

    def close(self) -> None:
        self.writer.close()
        self.sync()


@dataclass(frozen=True)
class Scalar:
    file: str         # the event file (one per worker-group start)
    step: int
    tag: str
    value: float
    wall_time: float  # seconds since the epoch, when rank 0 logged it


def read_scalars(log_dir: str) -> list[Scalar]:
    """Every scalar in the TensorBoard event files of a local ``log_dir``, file by file in write order."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    if not os.path.isdir(log_dir):
        return []
    files = sorted((f for f in os.listdir(log_dir) if "tfevents" in f),
                   key=lambda f: (int(f.split(".")[3]), f))  # events.out.tfevents.<unix time>.<host>…
    out = []
    for name in files:
        for event in EventFileLoader(os.path.join(log_dir, name)).Load():
            for v in event.summary.value:
                value = v.simple_value if v.HasField("simple_value") else float(v.tensor.float_val[0])
                out.append(Scalar(name, int(event.step), v.tag, float(value), float(event.wall_time)))
    return out
