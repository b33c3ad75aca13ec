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
    # Tune's legacy output engine with verbose=0 prints nothing; the new one still prints its
    # experiment table and TensorBoard hints. pw-ray prints its own progress line per stage and set.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address.startswith(("http://", "https://")):
        raise RuntimeError(
            f"RAY_ADDRESS={address} is a dashboard (job submission) address, not a cluster address: "
            f"submit the stage with `ray job submit --address {address} --working-dir . -- python "
            "jobs/<stage>.py ...`, or set RAY_ADDRESS to the head's GCS address (host:6379), or unset it")
    # Workers' own output (Ray Data progress bars inside actors, Ray Train's per-report lines, tracebacks
    # of Ray's helper actors) stays in Ray's log folder unless the user asked for DEBUG.
    log_to_driver = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    kwargs = dict(logging_level=logging.WARNING, log_to_driver=log_to_driver)
    held = hold_ray_messages()  # ray.init's own notices, until its log folder exists
    if address:
        info = ray.init(address=address, **kwargs)
    else:
        info = ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
    logs_dir = ray_logs_dir(info)
    route_ray_output(logs_dir, held)
    quiet_ray_data()
    ctx = ray.get_runtime_context()
    log.info("ray: %s %s (job %s), resources %s",
             "connected to the cluster at" if address else "local Ray at", ctx.gcs_address, ctx.get_job_id(),
             {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")})
    log.info("ray: Ray's own output (workers' logs, %s) is in %s", RAY_DRIVER_LOG, logs_dir)
    return True


#: The file in Ray's log folder that receives the Ray messages of this (driver) process.
RAY_DRIVER_LOG = "pw-ray-driver.log"


def ray_logs_dir(info) -> str:
    """Ray's log folder for this session (``<session dir>/logs``), or a temp folder when it is not here.

    ``info`` is what ``ray.init`` returned. A driver on another machine than the head (Ray Client)
    has no local session folder.
    """
    import tempfile

    session = (getattr(info, "address_info", None) or {}).get("session_dir")
    logs = os.path.join(session, "logs") if session else ""
    if not logs or not os.path.isdir(logs):
        logs = tempfile.mkdtemp(prefix="pw-ray-logs-")
    return logs


def _raise_ray_console(names=("ray", "ray.data", "ray.train", "ray.tune")) -> None:
    for name in names:
        for h in logging.getLogger(name).handlers:
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.stderr, sys.stdout):
                h.setLevel(logging.ERROR)


def hold_ray_messages() -> logging.Handler:
    """Before ``ray.init``: keep Ray's messages below ERROR off the console and hold them in memory
    (e.g. the token-authentication notice of a new local cluster) until :func:`route_ray_output`
    writes them to the log file, which exists only once Ray has started."""
    import logging.handlers

    import ray  # noqa: F401 - its import sets up the "ray" logger and its console handler

    _raise_ray_console(("ray",))
    held = logging.handlers.MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1)
    held._pw_ray = True
    logging.getLogger("ray").addHandler(held)
    return held


def route_ray_output(logs_dir: str, held: logging.Handler | None = None) -> str:
    """Send Ray's driver-side messages to ``<logs_dir>/pw-ray-driver.log``; the console keeps errors.

    Ray's loggers (``ray``, ``ray.data``) print to stderr and do not propagate; their console
    handlers are raised to ERROR and a file handler gets everything. ``ray.data`` is imported
    first: its import configures its loggers anew (a console handler at INFO that would print, e.g.,
    a line for every dataset started while another runs, as the sets at once do). Python warnings
    raised inside Ray's package (e.g. Ray Data's concurrency hints) go to the same file.
    ``held``: what :func:`hold_ray_messages` kept during ``ray.init``, written to the file first.
    Returns the path.
    """
    import warnings

    import ray
    import ray.data  # noqa: F401 - its import configures the "ray.data" loggers: route them after that

    path = os.path.join(logs_dir, RAY_DRIVER_LOG)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._pw_ray = True
    if held is not None:
        logging.getLogger("ray").removeHandler(held)
        held.setTarget(handler)
        held.flush()
        held.close()
    _raise_ray_console()
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        lg = logging.getLogger(name)
        if not any(getattr(h, "_pw_ray", False) for h in lg.handlers) and (lg.handlers or name == "ray"):
            lg.addHandler(handler)
    ray_dir = os.path.dirname(ray.__file__) + os.sep
    show = warnings.showwarning
    if not getattr(show, "_pw_ray", False):
        def showwarning(message, category, filename, lineno, file=None, line=None):
            if str(filename).startswith(ray_dir):
                logging.getLogger("ray").warning("%s", warnings.formatwarning(message, category, filename, lineno,
                                                                             line).rstrip())
            else:
                show(message, category, filename, lineno, file, line)

        showwarning._pw_ray = True
        warnings.showwarning = showwarning
    return path


#: Credentials that must never travel in a runtime env (Ray logs runtime envs and shows them in its dashboard).
CREDENTIAL_VARS = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"})


def keep_credentials_out_of_tune() -> None:
    """Stop Ray Tune from copying AWS credentials into every trial actor's runtime env.

    Tune (``ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE``) copies the driver's
    ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / session token into the ``env_vars`` of each
    trial's runtime env, which Ray's runtime-env agent writes to its log in clear and its
    dashboard shows. Trials need no such copy: like every Ray worker they inherit the node's
    environment (a local Ray: the driver's; a cluster: the nodes' instance roles or settings).
    """
    try:
        from ray.tune.execution import class_cache
    except ImportError:  # Tune not installed: nothing copies credentials
        return
    names = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    if names and CREDENTIAL_VARS & set(names):
        class_cache.ENV_VARS_TO_PROPAGATE = type(names)(n for n in names if n not in CREDENTIAL_VARS)


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
    """No Ray Data progress bars or per-dataset INFO on the console: pw-ray prints one line per stage
    and set. The setting travels with each dataset to the actors that execute it (e.g. the
    coordinator splitting a set between Ray Train workers)."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False
    for name in ("ray.data._internal.execution.streaming_executor", "ray.data._internal.progress"):
        logging.getLogger(name).setLevel(logging.WARNING)
