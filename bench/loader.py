"""Pretraining's input path against a plain pyarrow reader, side by side: samples per CPU-second.

    python bench/loader.py [--files 64] [--unique-files 8] [--epochs 3] [--batch 256] [--ray-data]
    python bench/loader.py --files 2700 --epochs 2 --ray-data        # a 700k-chip set's file count

Writes ``--unique-files`` shards of ``--chips-per-file`` chips (96 px, the S2 bands SatMAE uses,
~150 KB per chip after zstd) with the project's own shard writer, then hard-links them up to
``--files`` files, so a large set costs no disk and its pages stay in the page cache (read once
before timing). Then, every epoch, the paths run one after the other, in an order that rotates
from epoch to epoch:

* **loader**: the trainer's own input path, :class:`pw_ray.pretrain.loader.ChipStream` (rank 0
  of 1) over a :func:`~pw_ray.pretrain.loader.read_catalog` of the set: files in a seeded
  per-epoch order, a local shuffle window of ``--shuffle-buffer`` chips, batches of
  ``(B, C, H, W)`` uint16 host tensors ready for the step.
* **plain**: list the files, then for each, ``pyarrow.parquet.read_table`` + numpy +
  ``torch.from_numpy``, cut into batches: one process, no shuffle (the issue's reference).
* **ray-data** (``--ray-data``): the path the trainer had before, Ray Data's ``read_parquet``
  (files shuffled per epoch) → ``map_batches`` to numpy → ``streaming_split`` (what
  ``get_dataset_shard`` builds) → ``iter_torch_batches`` with the local shuffle buffer.
* **ray-data-tuned** (``--ray-data``): the cheapest Ray Data options found (docs/pretrain.md):
  the V1 Parquet datasource (no footer actors per epoch), pixels decoded in the collate
  function instead of a ``map_batches`` stage, the same split, shuffle buffer and batches.

CPU-seconds are summed over this process and every process under it (Ray's raylet, GCS, read
tasks, actors: ``utime + stime + cutime + cstime`` from ``/proc``, so processes that ended
during an epoch count through their parent), as deltas around each epoch. The loader's catalog
(listing + footers, once per run in the trainer) is charged to its first epoch, time and CPU,
as in a run; the plain reader lists the files every epoch. ``cores_per_h100`` = 3,000 samples/s
(a ViT-B SatMAE step on one H100 at the MFU goal) ÷ samples per CPU-second: the cores a GPU
worker needs if its loader keeps up at this cost per sample. ``--max-batches`` epochs are for
first-batch times: their samples per CPU-second carry the start-up and read-ahead of a whole
epoch. With ``--ray-data`` Ray's idle processes add their background CPU to every path's epochs
(a few tenths of a second each).

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from bench.proctree import cpu_between, snapshot  # noqa: E402

import numpy as np  # noqa: E402

log = logging.getLogger("bench.loader")

SET = "bench"
H100_SAMPLES_PER_S = 3000.0


# ----------------------------------------------------------------------------- CPU of a process tree
# ----------------------------------------------------------------------------- the set
def write_set(root: str, unique: int, files: int, chips: int, size_px: int, seed: int = 0) -> list[str]:
    """``unique`` shards of ``chips`` chips written with the project's writer, hard-linked up to
    ``files``; returns the set's shard URIs."""
    from pw_ray.bands import SATMAE_BANDS
    from pw_ray.ingest import shards as S

    bands = list(SATMAE_BANDS)
    rng = np.random.default_rng(seed)
    written = []
    for u in range(min(unique, files)):
        # a smooth field per band (16-px cells) plus sensor-like noise: ~150 KB per 96-px chip after
        # zstd, like the chips ingest writes from the synthetic archive (148 KB)
        cells = -(-size_px // 16)
        base = rng.uniform(500, 4000, size=(chips, len(bands), cells, cells))
        field = np.repeat(np.repeat(base, 16, axis=2), 16, axis=3)[:, :, :size_px, :size_px]
        pixels = np.clip(field + rng.normal(0, 50, field.shape), 0, 10_000).astype(np.uint16)
        meta = [{"chip_id": f"{SET}-{u:05d}-{i:04d}", "set": SET, "region": "eu"} for i in range(chips)]
        uri = S.parquet_uri(root, SET, "eu", u)
        S.write_parquet_shard(S.chips_table(meta, pixels, bands), uri)
        written.append(uri)
    for c in range(len(written), files):
        os.link(written[c % len(written)], S.parquet_uri(root, SET, "eu", c))
    for uri in written:  # into the page cache: every path reads warm files
        Path(uri).read_bytes()
    return S.shard_files(root, SET)


# ----------------------------------------------------------------------------- the paths
def run_loader(root: str, epoch: int, args, catalog) -> tuple[int, float]:
    from pw_ray.pretrain.loader import ChipStream

    n, first, t0 = 0, None, time.perf_counter()
    with ChipStream(catalog, batch_size=args.batch, seed=1, epoch=epoch, shuffle_chips=args.shuffle_buffer,
                    read_threads=args.read_threads, prefetch_batches=args.prefetch) as stream:
        for i, batch in enumerate(stream):
            if first is None:
                first = time.perf_counter() - t0
            n += len(batch)
            if i + 1 == args.max_batches:
                break
    return n, first


def run_plain(root: str, epoch: int, args, _=None) -> tuple[int, float]:
    import pyarrow.parquet as pq
    import torch

    from pw_ray.ingest import shards as S

    n, first, t0 = 0, None, time.perf_counter()
    for uri in S.shard_files(root, SET):
        pixels = torch.from_numpy(S.read_pixels(pq.read_table(uri, columns=["pixels"])))
        for i in range(0, len(pixels) - args.batch + 1, args.batch):
            batch = pixels[i:i + args.batch]
            if first is None:
                first = time.perf_counter() - t0
            n += len(batch)
            if n == args.max_batches * args.batch:
                return n, first
    return n, first


def ray_data_iterator(root: str, args, tuned: bool):
    """(iterator, shape): the set as Ray Data streams it to one Train worker (``streaming_split``)."""
    import pyarrow.parquet as pq
    import ray

    from pw_ray.ingest import shards as S

    uris = S.shard_files(root, SET)
    shape = json.loads(pq.read_schema(uris[0]).metadata[b"pw_ray.shape"])
    ray.data.DataContext.get_current().use_datasource_v2 = not tuned
    ds = ray.data.read_parquet(uris, shuffle=ray.data.FileShuffleConfig(seed=1)).select_columns(["pixels"])
    if not tuned:
        ds = ds.map_batches(_pixels_batch, fn_kwargs={"shape": shape}, batch_format="pyarrow", batch_size=256)
    return ds.streaming_split(1, equal=True)[0], shape


def _pixels_batch(batch, shape):
    from pw_ray.ingest.shards import column_pixels

    return {"pixels": column_pixels(batch.column("pixels"), shape)}


def run_ray_data(it_shape, epoch: int, args, tuned: bool) -> tuple[int, float]:
    import torch
    from ray.data.collate_fn import ArrowBatchCollateFn

    from pw_ray.ingest.shards import column_pixels

    it, shape = it_shape

    class PixelsCollate(ArrowBatchCollateFn):
        def __call__(self, batch):
            return {"pixels": torch.from_numpy(column_pixels(batch.column("pixels"), shape))}

    n, first, t0 = 0, None, time.perf_counter()
    for batch in it.iter_torch_batches(batch_size=args.batch, drop_last=True,
                                       local_shuffle_buffer_size=args.shuffle_buffer or None,
                                       local_shuffle_seed=1 + epoch,
                                       collate_fn=PixelsCollate() if tuned else None):
        if first is None:
            first = time.perf_counter() - t0
        n += len(batch["pixels"])
        if n == args.max_batches * args.batch:
            break
    return n, first


# ----------------------------------------------------------------------------- the run
def summarize(epochs: list[dict], chip_mb: float) -> dict:
    """Figures of one path over its epochs."""
    samples = sum(e["samples"] for e in epochs)
    cpu = sum(e["cpu_s"] for e in epochs)
    wall = sum(e["wall_s"] for e in epochs)
    per_epoch = [e["samples"] / e["cpu_s"] for e in epochs]
    return {
        "samples_per_cpu_s": round(samples / cpu, 1),
        "epoch_samples_per_cpu_s": [round(v, 1) for v in per_epoch],
        "mb_per_cpu_s": round(samples * chip_mb / cpu, 1),
        "mb_per_s": round(samples * chip_mb / wall, 1),
        "first_batch_s": [round(e["first_batch_s"], 3) for e in epochs],
        "cpu_s": [round(e["cpu_s"], 2) for e in epochs],
        "process_cpu_s": [round(e["process_cpu_s"], 2) for e in epochs],
        "wall_s": [round(e["wall_s"], 2) for e in epochs],
        "cores_per_h100": round(H100_SAMPLES_PER_S * cpu / samples, 3),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=64, help="shard files in the set (a 700k-chip set has ~2,700)")
    p.add_argument("--unique-files", type=int, default=8, help="files written; the rest are hard links to them")
    p.add_argument("--chips-per-file", type=int, default=256, help="chips per file (chips.chunk_size)")
    p.add_argument("--size", type=int, default=96, help="chip side, px")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=256, help="chips per batch")
    p.add_argument("--shuffle-buffer", type=int, default=256, help="chips in the local shuffle window/buffer")
    p.add_argument("--read-threads", type=int, default=2, help="loader: threads reading row groups")
    p.add_argument("--prefetch", type=int, default=2, help="loader: batches ready ahead of the consumer")
    p.add_argument("--max-batches", type=int, default=0,
                   help="end every epoch of every path after this many batches (0: whole epochs); for first-batch "
                        "times over many epochs of a large set")
    p.add_argument("--ray-data", action="store_true", help="also run the Ray Data paths (starts a local Ray)")
    p.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the local Ray for --ray-data")
    p.add_argument("--root", default=None, help="write the set here and keep it (default: a temp dir, removed)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("ray", "ray.data", "ray.train"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import torch

    from pw_ray.ingest import shards as S
    from pw_ray.pretrain.loader import read_catalog

    torch.set_num_threads(1)
    root = args.root or tempfile.mkdtemp(prefix="pwray-loader-")
    if not S.shard_files(root, SET):
        log.info("writing %d shards of %d chips, hard-linked to %d files, under %s", args.unique_files,
                 args.chips_per_file, args.files, root)
        write_set(root, args.unique_files, args.files, args.chips_per_file, args.size)
    uris = S.shard_files(root, SET)
    if len(uris) != args.files:
        raise SystemExit(f"{root} holds {len(uris)} shard files of set {SET!r}, --files says {args.files}")
    disk_mb = sum(os.path.getsize(u) for u in uris) / 1e6

    # the loader's catalog: listing + every footer, once per run in the trainer
    before, t0 = snapshot(), time.perf_counter()
    catalog = read_catalog(S.shard_files(root, SET))
    catalog_wall = time.perf_counter() - t0
    catalog_cpu = sum(cpu_between(before, snapshot()).values())
    chip_mb = 2 * int(np.prod(catalog.shape)) / 1e6

    paths = {"loader": lambda e: run_loader(root, e, args, catalog), "plain": lambda e: run_plain(root, e, args)}
    ray_started = False
    if args.ray_data:
        import ray

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ["RAY_worker_niceness"] = "0"  # the same priority as this process's paths
        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, logging_level="WARNING",
                 _temp_dir=tempfile.mkdtemp(prefix="pwl-"))
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray_started = True
        time.sleep(5)  # let the start-up settle before measuring
        iterators = {}

        def ray_path(tuned):
            def run(e):
                if tuned not in iterators:  # as in build_trainer: the dataset is made once per run
                    iterators[tuned] = ray_data_iterator(root, args, tuned)
                return run_ray_data(iterators[tuned], e, args, tuned)
            return run

        paths["ray-data"] = ray_path(False)
        paths["ray-data-tuned"] = ray_path(True)
    names = list(paths)
    results: dict[str, list[dict]] = {n: [] for n in names}
    try:
        for epoch in range(args.epochs):
            for name in names[epoch % len(names):] + names[:epoch % len(names)]:
                before, t0 = snapshot(), time.perf_counter()
                samples, first = paths[name](epoch)
                wall = time.perf_counter() - t0
                if ray_started:
                    time.sleep(0.5)  # ended read tasks and actors are reaped, their CPU lands in the parent
                spent = cpu_between(before, snapshot())
                cpu, mine = sum(spent.values()), spent.get(os.getpid(), 0.0)
                if name == "loader" and epoch == 0:  # the run's listing and footers come before its first batch
                    first, wall = first + catalog_wall, wall + catalog_wall
                    cpu, mine = cpu + catalog_cpu, mine + catalog_cpu
                results[name].append({"samples": samples, "cpu_s": cpu, "process_cpu_s": mine, "wall_s": wall,
                                      "first_batch_s": first})
                log.info("epoch %d %-15s %7d samples  %6.1f CPU-s (%5.1f in this process)  %6.1f s  first batch "
                         "%.2f s  %6.0f samples/CPU-s", epoch, name, samples, cpu, mine, wall, first, samples / cpu)
    finally:
        if ray_started:
            import ray

            ray.shutdown()
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)

    figures = {name: summarize(results[name], chip_mb) for name in names}
    loader, plain = figures["loader"], figures["plain"]
    out = {
        "samples_per_cpu_s": loader["samples_per_cpu_s"],
        "plain_samples_per_cpu_s": plain["samples_per_cpu_s"],
        "loader_vs_plain": round(loader["samples_per_cpu_s"] / plain["samples_per_cpu_s"], 3),
        "loader_vs_plain_median_epoch": round(statistics.median(loader["epoch_samples_per_cpu_s"])
                                              / statistics.median(plain["epoch_samples_per_cpu_s"]), 3),
        "first_batch_s": max(loader["first_batch_s"]),
        "cores_per_h100": loader["cores_per_h100"],
        "plain_cores_per_h100": plain["cores_per_h100"],
        "catalog_s": round(catalog_wall, 3), "catalog_cpu_s": round(catalog_cpu, 3),
        "paths": figures,
        "files": args.files, "unique_files": args.unique_files, "chips_per_epoch": args.files * args.chips_per_file,
        "chip_mb": round(chip_mb, 4), "disk_mb_per_chip": round(disk_mb / (args.files * args.chips_per_file), 4),
        "epochs": args.epochs, "max_batches": args.max_batches, "batch": args.batch,
        "shuffle_buffer": args.shuffle_buffer,
        "read_threads": args.read_threads, "prefetch": args.prefetch,
        "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 1),
    }
    for name in names:
        if name.startswith("ray-data"):
            f = figures[name]
            out[name.replace("-", "_") + "_samples_per_cpu_s"] = f["samples_per_cpu_s"]
            out[name.replace("-", "_") + "_first_batch_s"] = max(f["first_batch_s"])
    print(f"\n{args.files} files × {args.chips_per_file} chips of {catalog.shape} uint16 "
          f"({out['disk_mb_per_chip'] * 1000:.0f} KB per chip on disk), batch {args.batch}, {args.epochs} epochs, "
          f"{os.cpu_count()} CPUs (load {out['load_avg_1m']}); catalog {catalog_wall:.2f} s, {catalog_cpu:.2f} CPU-s")
    print(f"{'path':<16}{'samples/CPU-s':>14}{'MB/CPU-s':>10}{'MB/s':>8}{'cores/H100':>11}  first batch per epoch (s)")
    for name in names:
        f = figures[name]
        print(f"{name:<16}{f['samples_per_cpu_s']:>14.0f}{f['mb_per_cpu_s']:>10.0f}{f['mb_per_s']:>8.0f}"
              f"{f['cores_per_h100']:>11.2f}  {' '.join(f'{v:.2f}' for v in f['first_batch_s'])}")
    print(f"loader / plain, samples per CPU-second: {out['loader_vs_plain']:.3f} "
          f"(median epochs {out['loader_vs_plain_median_epoch']:.3f})")
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
