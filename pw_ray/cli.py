"""``pw-ray``: the command line. Every subcommand validates the config before any work starts."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from importlib.resources import files as pkg_files

from pw_ray.config import ConfigError, load_config

log = logging.getLogger("pw_ray")

DEMO_CONFIG = str(pkg_files("pw_ray") / "data" / "demo.yaml")


def _common(p: argparse.ArgumentParser, config_required: bool = True) -> None:
    p.add_argument("--config", required=config_required, default=None if config_required else DEMO_CONFIG,
                   help="experiment YAML (path or URI)" + ("" if config_required else "; default: the demo config"))
    p.add_argument("--root", help="override the config's storage root (path, s3://, gs://)")
    p.add_argument("--force", action="store_true",
                   help="redo the stage's work, ignoring what is stored (for run: every stage)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pw-ray", description=(
        "Pretrain where? on Ray: plan, ingest, pretrain, evaluate, analyze and report the experiment "
        "on how pretraining-data geography shapes geospatial foundation models."))
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="run every stage on the embedded synthetic archive",
                          description="Run the whole experiment on the embedded synthetic Sentinel-2 "
                                      "archive under one folder (its storage root). Rerun to resume.")
    # --root as well, like every other command; --out is the older spelling.
    demo.add_argument("--root", "--out", dest="out", default="pw-ray-demo",
                      help="storage root for everything: path, s3://, gs:// (default: ./pw-ray-demo)")
    demo.add_argument("--config", default=DEMO_CONFIG, help="config to use instead of the demo's")
    demo.add_argument("--force", action="store_true", help="rerun every stage")
    demo.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    helps = {
        "plan": "sample the points of every pretraining set and task → points/*.parquet",
        "ingest": "search scenes, read chips, write shards → index/, shards/, manifest/",
        "pretrain": "pretrain one SatMAE per set on Ray Train → runs/pretrain/<set>/",
        "evaluate": "run (or resume) the evaluation grid on Ray Tune → results/results.parquet",
        "analyze": "diversity measures and their correlation with performance → results/",
        "report": "write report/index.html, report/README.md and figures",
        "run": "all stages in order (each skips what is done)",
        "validate": "check a config and print it with defaults filled in (writes nothing)",
    }
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=text)
        _common(p)
        if name in ("ingest", "pretrain"):
            p.add_argument("--sets", type=_set_names, metavar="A,B",
                           help="only these sets (comma-separated names"
                                + (" of pretraining sets or tasks" if name == "ingest" else " of pretraining sets")
                                + "); every set by default. The sets run at once either way; a run over "
                                  "some sets never marks the stage done")
        if name in ("ingest", "run"):
            p.add_argument("--retry-failed", action="store_true",
                           help="also retry chips that failed permanently (a missing band, a corrupt asset); "
                                "transient failures are retried on every run")
        if name == "validate":
            _cluster_option(p)
    est = sub.add_parser("estimate", help="points, requests, bytes, hours and cost of a config, before running it",
                         description="Estimate every stage of the experiment (points, STAC requests, scenes, "
                                     "bytes read and written, chips, CPU- and GPU-hours, checkpoint storage, "
                                     "cost) from the config alone, printing the source of every number. "
                                     "Runs nothing, writes nothing, reads no remote file.")
    est.add_argument("--config", required=True, help="experiment YAML (path or URI)")
    est.add_argument("--root", help="override the config's storage root (path, s3://, gs://)")
    est.add_argument("--calibration", action="append", metavar="JSON",
                     help="output (or last JSON line) of bench/gpu_step.py, bench/ingest.py, bench/analyze.py or "
                          "bench/evaluate.py; repeat for several")
    _cluster_option(est)
    for flag, field in (("--mfu", "mfu"), ("--gpu-peak-tflops", "gpu_peak_tflops"),
                        ("--price-cpu-hour", "price_cpu_hour"), ("--price-gpu-hour", "price_gpu_hour"),
                        ("--price-storage-gb-month", "price_storage_gb_month")):
        est.add_argument(flag, type=float, dest=field, help=f"overrides the config's estimate.{field}")
    est.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return ap


def _set_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give one or more set names separated by commas, e.g. europe,africa")
    return names


def _cluster_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", metavar="YAML",
                   help="a Ray cluster YAML (cluster.yaml, cluster-gcp.yaml): check every resource request of the "
                        "config fits its node types and caps")


ESTIMATE_FLAGS = ("mfu", "gpu_peak_tflops", "price_cpu_hour", "price_gpu_hour", "price_storage_gb_month")


def _cluster_report(cfg, uri: str):
    from pw_ray.cluster import check_fit, load_cluster

    return check_fit(cfg, load_cluster(uri))


def _estimate(args, cfg) -> int:
    """``pw-ray estimate``: the arithmetic of pw_ray.estimate, printed."""
    from pw_ray.estimate import CalibrationError, estimate, format_estimate, load_calibration

    flags = {f: getattr(args, f) for f in ESTIMATE_FLAGS if getattr(args, f) is not None}
    if flags:
        from pw_ray.config import parse_config

        data = cfg.model_dump(mode="json")
        data["estimate"] = {**data["estimate"], **flags}
        cfg = parse_config(data)
    try:
        calibration = load_calibration(args.calibration)
        fit = _cluster_report(cfg, args.cluster) if args.cluster else None
    except (CalibrationError, ValueError) as err:
        print(f"pw-ray estimate failed: {err}", file=sys.stderr, flush=True)
        return 2
    print(format_estimate(estimate(cfg, calibration), cfg, args.config, fit), flush=True)
    return 0


def _print_fetch_hint(index_uri: str | None) -> None:
    """On an object store, say how to copy the report folder to this machine to open it."""
    from pw_ray import storage

    if index_uri and storage.is_remote(index_uri):
        folder = index_uri.rsplit("/", 1)[0]
        print(f"report: fetch it with `{storage.fetch_hint(folder)}`, then open report/index.html", flush=True)


def main(argv: list[str] | None = None) -> int:
    from pw_ray.runtime import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    overrides = {}
    if args.command == "demo":
        overrides["root"] = args.out
    elif getattr(args, "root", None):
        overrides["root"] = args.root
    try:
        if args.command == "estimate":  # reads the config only: the root may be a placeholder
            cfg = load_config(args.config, overrides, check_root=False)
        elif args.command == "validate":  # validation writes nothing: no probe file, no root folder
            from pw_ray.config import check_storage_root

            cfg = load_config(args.config, overrides, check_root=False)
            check_storage_root(cfg.root, write=False)
        else:
            cfg = load_config(args.config, overrides)
    except ConfigError as err:
        from pw_ray.runtime import failure_reason

        if "\n" in str(err):  # the field-by-field listing, then the reason on one (last) line
            print(f"pw-ray: {err}", file=sys.stderr)
        print(f"pw-ray {args.command} failed: {failure_reason(err)}", file=sys.stderr, flush=True)
        return 2
    if args.command in ("validate", "demo", "run", "evaluate"):
        from pw_ray.config import scoring_warnings

        for warning in scoring_warnings(cfg):
            log.warning("config: %s", warning)
        if cfg.tasks and args.command == "validate":
            log.info("config: task-region subset sizes are known only after ingest; `pw-ray evaluate` lists the "
                     "cells it skips (subsets under evaluation.min_subset=%d chips)", cfg.evaluation.min_subset)
    if getattr(args, "sets", None) is not None:  # names checked before any work starts, like the config
        from pw_ray.experiment import select_sets

        try:
            select_sets(cfg, args.command, args.sets)
        except ValueError as err:
            print(f"pw-ray {args.command} failed: {err}", file=sys.stderr, flush=True)
            return 2
    if args.command == "estimate":
        return _estimate(args, cfg)
    if args.command == "validate":
        from pw_ray.config import dump_config

        print(dump_config(cfg))
        if args.cluster:
            from pw_ray.cluster import ClusterError

            try:
                fit = _cluster_report(cfg, args.cluster)
            except ClusterError as err:
                print(f"pw-ray validate failed: {err}", file=sys.stderr, flush=True)
                return 2
            for line in fit.lines():
                print(line)
            for s in fit.shortfalls:
                log.warning("cluster: %s", s)
            if fit.problems:
                print(f"pw-ray validate failed: {len(fit.problems)} resource request(s) of {args.config} fit no "
                      f"node type of {args.cluster}: {fit.problems[0]}", file=sys.stderr, flush=True)
                return 2
        return 0
    from pw_ray import experiment as E
    from pw_ray.runtime import ensure_ray, failure_reason, shutdown_ray

    t0 = time.perf_counter()
    started_ray = False
    try:
        # Inside the try: a cluster that cannot be reached is a failure with a reason too.
        started_ray = ensure_ray()
        log.info("pw-ray %s: config %s, root %s", args.command, args.config, cfg.root)
        if args.command in ("demo", "run"):
            path = E.run_all(cfg, force=args.force, retry_failed=getattr(args, "retry_failed", False))
            print(f"done in {time.perf_counter() - t0:.0f}s — report: {path}", flush=True)
            _print_fetch_hint(path)
        elif args.command == "plan":
            E.plan(cfg, args.force)
        elif args.command == "ingest":
            E.ingest(cfg, args.force, retry_failed=args.retry_failed, sets=args.sets)
        elif args.command == "pretrain":
            E.pretrain(cfg, args.force, sets=args.sets)
        elif args.command == "evaluate":
            E.evaluate(cfg, args.force)
        elif args.command == "analyze":
            E.analyze(cfg, args.force)
        elif args.command == "report":
            path = E.report(cfg, args.force)
            print(f"report: {path}", flush=True)
            _print_fetch_hint(path)
    except Exception as err:
        log.exception("%s failed", args.command)
        # The reason must be the last line of the output (`ray job logs`, the job's status
        # message): stop Ray first, since its log streaming and shutdown print after us otherwise.
        if started_ray:  # never a Ray this process had before main() was called
            shutdown_ray()
        sys.stdout.flush()
        print(f"pw-ray {args.command} failed: {failure_reason(err)}", file=sys.stderr, flush=True)
        return 1
    log.info("pw-ray %s: finished in %.0fs", args.command, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
