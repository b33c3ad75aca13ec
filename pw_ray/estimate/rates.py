"""The rates an estimate multiplies by, each with where it came from.

A rate is, in order of precedence: set in the config's ``estimate`` section (or by its
command-line flag); measured by one of the project's benchmarks, from the last JSON line of
``bench/gpu_step.py``, ``bench/ingest.py``, ``bench/analyze.py`` or ``bench/evaluate.py`` given
with ``--calibration``; a figure measured and documented in ``docs/benchmarks.md``; else a
labelled assumption. Every :class:`Rate` carries that source in words, and the estimate prints it.
No price is built in: without a price there is no cost.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from pw_ray import storage


@dataclass(frozen=True)
class Rate:
    value: float | None
    #: Where the value came from, in full (printed once, in the estimate's "rates" section).
    source: str
    #: The same in a few words, for the figures that use it (``calibration ingest.json``).
    short: str = ""

    @property
    def label(self) -> str:
        return self.short or re.split(r" \(|,|:", self.source)[0]


# --- figures measured and documented in docs/benchmarks.md (the 2-core development VM) -------------------
#: MFU of a ViT-B pretraining step measured by ``bench/gpu_step.py`` and documented in
#: docs/benchmarks.md; None while that page says the bench has not run on a GPU
#: (tests/test_estimate.py keeps the two in step).
DOCUMENTED_MFU: Rate | None = None
#: Without a documented MFU: a round figure for a ViT-B MAE step in bf16/fp16 on one GPU.
ASSUMED_MFU = Rate(0.3, "assumption: no GPU figure of bench/gpu_step.py is documented yet (docs/benchmarks.md); "
                        "set estimate.mfu or pass --calibration <gpu_step JSON>", "assumption")
DOCUMENTED_INGEST = Rate(82.0, "docs/benchmarks.md, bench/ingest.py: 164 chips/s on 2 cores, S2-like layout, COGs "
                               "on local disk (no network: a cloud run reads over HTTP and may be slower)",
                         "docs/benchmarks.md")
DOCUMENTED_INDEX = Rate(224.0, "docs/benchmarks.md, bench/ingest.py: index phase 448 chips/s on 2 cores (local "
                               "catalog, no HTTP latency)", "docs/benchmarks.md")
DOCUMENTED_ANALYZE = Rate(621.0, "docs/benchmarks.md, bench/analyze.py: 621 chips per CPU second (Ray path)",
                          "docs/benchmarks.md")
#: Seconds per evaluated cell and the chips per task they were measured at (docs/benchmarks.md).
DOCUMENTED_KNN_S_PER_CHIP = Rate(0.03 / 358, "docs/benchmarks.md, bench/evaluate.py: kNN 0.03 s per cell of "
                                             "~358 chips (tiny encoder, 96-wide embeddings)", "docs/benchmarks.md")
DOCUMENTED_LINEAR_S_PER_CHIP = Rate(3.3 / 358, "docs/benchmarks.md, bench/evaluate.py: linear probe 3.3 s per "
                                               "cell of ~358 chips (tiny encoder, 96-wide embeddings)",
                                               "docs/benchmarks.md")

# --- which benchmark a JSON line came from: the keys it always has ------------------------------------------
BENCH_KEYS = {
    "gpu_step": {"samples_per_s", "flops_per_sample", "mfu", "preset"},
    "ingest": {"chips_per_s", "cores", "index_chips_per_s"},
    "analyze": {"ray_chips_per_cpu_s"},
    "evaluate": {"knn_cached_s_per_cell", "linear_cached_s_per_cell", "chips_per_task"},
}


class CalibrationError(ValueError):
    """A calibration file that is not the last JSON line of one of the project's benchmarks."""


@dataclass(frozen=True)
class Calibration:
    """The figures of each benchmark given (bench name → (file, its JSON))."""

    runs: dict[str, tuple[str, dict]]

    def get(self, bench: str) -> tuple[str, dict] | None:
        return self.runs.get(bench)


def last_json_line(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else None
    return None


def load_calibration(uris: list[str] | None) -> Calibration:
    """Read each file (a bench's whole output or just its last line) and tell which bench it is."""
    runs = {}
    for uri in uris or []:
        try:
            data = last_json_line(storage.read_text(str(uri)))
        except FileNotFoundError:
            raise CalibrationError(f"calibration file not found: {uri}") from None
        if data is None:
            raise CalibrationError(f"calibration {uri}: no JSON object line; give the output (or last line) of "
                                   "bench/gpu_step.py, bench/ingest.py, bench/analyze.py or bench/evaluate.py")
        kind = next((k for k, keys in BENCH_KEYS.items() if keys <= data.keys()), None)
        if kind is None:
            wanted = "; ".join(f"{k}: {', '.join(sorted(v))}" for k, v in BENCH_KEYS.items())
            raise CalibrationError(f"calibration {uri}: its JSON has none of the benchmarks' key sets ({wanted}); "
                                   f"it has {', '.join(sorted(data)) or 'no keys'}")
        if kind in runs:
            raise CalibrationError(f"calibration: two {kind} benchmark files ({runs[kind][0]}, {uri}); give one")
        runs[kind] = (Path(str(uri)).name, data)
    return Calibration(runs)


@dataclass(frozen=True)
class Rates:
    mfu: Rate
    #: FLOP/s of one GPU at its dense peak.
    gpu_peak_flops: Rate
    #: Measured pretraining samples per second per GPU (only from a gpu_step run of the config's model).
    gpu_samples_per_s: Rate
    ingest_chips_per_cpu_s: Rate
    index_chips_per_cpu_s: Rate
    analyze_chips_per_cpu_s: Rate
    knn_s_per_chip: Rate
    linear_s_per_chip: Rate
    #: Bytes per chip of the Parquet shards and the WebDataset tars, and the chip pixels (C·H·W) they were
    #: measured at (None: use the model's assumption).
    parquet_bytes_per_px: Rate
    price_cpu_hour: Rate
    price_gpu_hour: Rate
    price_storage_gb_month: Rate


def resolve_rates(cfg, calibration: Calibration) -> Rates:
    """The rates for ``cfg`` (its ``estimate`` section, then ``calibration``, then the defaults)."""
    est = cfg.estimate

    def pick(field: str, measured: Rate | None, *fallbacks: Rate | None) -> Rate:
        value = getattr(est, field)
        if value is not None:
            return Rate(float(value), f"config estimate.{field}")
        for r in (measured, *fallbacks):
            if r is not None and r.value is not None:
                return r
        return Rate(None, f"not set: estimate.{field}")

    gpu = calibration.get("gpu_step")
    ingest = calibration.get("ingest")
    analyze = calibration.get("analyze")
    evaluate = calibration.get("evaluate")

    mfu_measured = None
    samples = None
    if gpu:
        name, d = gpu
        if d.get("mfu") is not None:
            mfu_measured = Rate(float(d["mfu"]), f"calibration {name} (bench/gpu_step.py on {d.get('device')}, "
                                                 f"{d.get('preset')}, batch {d.get('batch')})")
        if d.get("preset") == cfg.model.preset and d.get("samples_per_s"):
            samples = Rate(float(d["samples_per_s"]), f"calibration {name} (bench/gpu_step.py on {d.get('device')}, "
                                                      f"{d.get('preset')}, batch {d.get('batch')})")
    peak = Rate(None if est.gpu_peak_tflops is None else est.gpu_peak_tflops * 1e12,
                "config estimate.gpu_peak_tflops" if est.gpu_peak_tflops is not None
                else "not set: estimate.gpu_peak_tflops (the GPU's dense bf16 peak)")
    # Without a configured peak a measured samples/s of this very model is used as it is; only for
    # another model does the bench's MFU apply, at the bench GPU's own peak.
    if peak.value is None and samples is None and gpu and gpu[1].get("peak_flops"):
        peak = Rate(float(gpu[1]["peak_flops"]), f"calibration {gpu[0]} (peak of {gpu[1].get('device')})")

    ingest_rate = index_rate = parquet = None
    if ingest:
        name, d = ingest
        cores = float(d["cores"]) or 1.0
        ingest_rate = Rate(float(d["chips_per_s"]) / cores, f"calibration {name} (bench/ingest.py: "
                                                             f"{d['chips_per_s']} chips/s on {d['cores']} cores)")
        index_rate = Rate(float(d["index_chips_per_s"]) / cores, f"calibration {name} (bench/ingest.py: index "
                                                                 f"phase {d['index_chips_per_s']} chips/s on "
                                                                 f"{d['cores']} cores)")
        if d.get("parquet_bytes_per_chip") and d.get("size_px") and d.get("bands"):
            px = float(d["bands"]) * float(d["size_px"]) ** 2
            parquet = Rate(float(d["parquet_bytes_per_chip"]) / px,
                           f"calibration {name} (bench/ingest.py: {d['parquet_bytes_per_chip']} Parquet bytes per "
                           f"{d['bands']}×{d['size_px']}² chip)")
    analyze_rate = None
    if analyze:
        name, d = analyze
        analyze_rate = Rate(float(d["ray_chips_per_cpu_s"]), f"calibration {name} (bench/analyze.py)")
    knn = linear = None
    if evaluate:
        name, d = evaluate
        chips = sum(d["chips_per_task"].values()) / max(len(d["chips_per_task"]), 1)
        knn = Rate(float(d["knn_cached_s_per_cell"]) / chips,
                   f"calibration {name} (bench/evaluate.py: kNN {d['knn_cached_s_per_cell']} s per cell of "
                   f"{chips:.0f} chips, {d.get('model')} encoder)")
        linear = Rate(float(d["linear_cached_s_per_cell"]) / chips,
                      f"calibration {name} (bench/evaluate.py: linear {d['linear_cached_s_per_cell']} s per cell of "
                      f"{chips:.0f} chips, {d.get('model')} encoder)")

    return Rates(
        mfu=pick("mfu", mfu_measured, DOCUMENTED_MFU, ASSUMED_MFU),
        gpu_peak_flops=peak,
        gpu_samples_per_s=samples or Rate(None, "no bench/gpu_step.py calibration of this model"),
        ingest_chips_per_cpu_s=pick("ingest_chips_per_cpu_s", ingest_rate, DOCUMENTED_INGEST),
        index_chips_per_cpu_s=index_rate or DOCUMENTED_INDEX,
        analyze_chips_per_cpu_s=pick("analyze_chips_per_cpu_s", analyze_rate, DOCUMENTED_ANALYZE),
        knn_s_per_chip=knn or DOCUMENTED_KNN_S_PER_CHIP,
        linear_s_per_chip=linear or DOCUMENTED_LINEAR_S_PER_CHIP,
        parquet_bytes_per_px=parquet or Rate(None, ""),
        price_cpu_hour=pick("price_cpu_hour", None),
        price_gpu_hour=pick("price_gpu_hour", None),
        price_storage_gb_month=pick("price_storage_gb_month", None),
    )


__all__ = ["Rate", "Rates", "Calibration", "CalibrationError", "load_calibration", "resolve_rates",
           "last_json_line", "DOCUMENTED_MFU", "ASSUMED_MFU"]
