"""Process set-up: logging, and one Ray connection per process."""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("pw_ray")


def setup_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_pw_ray", False) for h in root.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        h._pw_ray = True
        root.addHandler(h)
    root.setLevel(level)
    for noisy in ("rasterio", "urllib3", "matplotlib", "PIL", "fsspec", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def ensure_ray(num_cpus: int | None = None, address: str | None = None) -> None:
    """Connect to the cluster named by ``RAY_ADDRESS`` (as under ``ray job submit``) or start a local one."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray Data prints its own progress bars; keep them, but without Tune's verbose tables.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(logging_level=logging.WARNING, log_to_driver=True)
    # Ship the package to workers when connecting to an existing cluster from a checkout.
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
    quiet_ray_data()
    log.info("ray: %s", {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")})


def quiet_ray_data() -> None:
    """Keep Ray Data's progress bars but not its per-dataset INFO chatter."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    ctx.print_on_execution_start = False if hasattr(ctx, "print_on_execution_start") else None
    for name in ("ray.data", "ray.data._internal.execution.streaming_executor",
                 "ray.data._internal.progress"):
        logging.getLogger(name).setLevel(logging.WARNING)
