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


def ensure_ray(num_cpus: int | None = None, address: str | None = None) -> bool:
    """Connect to the cluster named by ``RAY_ADDRESS`` or start a local Ray; False if Ray was up already.

    Under ``ray job submit`` the job supervisor sets ``RAY_ADDRESS`` to the cluster's GCS
    address, so a job's driver joins the cluster it was submitted to (and inherits the job's
    runtime env: ``--working-dir`` reaches every worker). Without it, Ray starts locally (or
    joins the cluster last started with ``ray start`` on this machine, Ray's own rule).
    """
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray Data prints its own progress bars; keep them, but without Tune's verbose tables.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address.startswith(("http://", "https://")):
        raise RuntimeError(
            f"RAY_ADDRESS={address} is a dashboard (job submission) address, not a cluster address: "
            f"submit the stage with `ray job submit --address {address} --working-dir . -- python "
            "jobs/<stage>.py ...`, or set RAY_ADDRESS to the head's GCS address (host:6379), or unset it")
    kwargs = dict(logging_level=logging.WARNING, log_to_driver=True)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
    quiet_ray_data()
    ctx = ray.get_runtime_context()
    log.info("ray: %s %s (job %s), resources %s",
             "connected to the cluster at" if address else "local Ray at", ctx.gcs_address, ctx.get_job_id(),
             {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")})
    return True


def shutdown_ray() -> None:
    """Disconnect from (or stop the local) Ray, never raising: used on the way out after a failure."""
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception as err:  # the failure being reported matters more
        log.warning("ray.shutdown failed: %s", err)


def failure_reason(err: BaseException, limit: int = 600) -> str:
    """One line saying why a stage failed: the error's type and message, not a traceback.

    Errors raised inside Ray tasks and actors carry the remote traceback in their message;
    the original exception (``.cause``) is reported instead.
    """
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        cause = getattr(err, "cause", None)
        if isinstance(cause, BaseException):
            err = cause
        else:
            break
    lines = [" ".join(line.split()) for line in str(err).splitlines()]
    text = ""
    for line in filter(None, lines):  # "header:\n  a\n  b" → "header: a; b"
        text += line if not text else (" " if text.endswith(":") else "; ") + line
    text = text or "(no message)"
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"{type(err).__name__}: {text}"


def quiet_ray_data() -> None:
    """Keep Ray Data's progress bars but not its per-dataset INFO chatter."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    ctx.print_on_execution_start = False if hasattr(ctx, "print_on_execution_start") else None
    for name in ("ray.data", "ray.data._internal.execution.streaming_executor",
                 "ray.data._internal.progress"):
        logging.getLogger(name).setLevel(logging.WARNING)
