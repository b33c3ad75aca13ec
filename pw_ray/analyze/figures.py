"""The report's figures: one PNG per ``plot_*`` call, drawn with matplotlib's Agg canvas.

No pyplot, so no global figure state and no display needed. Each ``plot_*`` function writes
one PNG into ``out_dir`` and returns its path. Sets named in ``external`` (published numbers,
see :mod:`pw_ray.analyze.external`) are drawn apart: hollow grey diamonds in scatters,
hatched bars, ``†`` after their names.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import PathPatch
from matplotlib.path import Path as MplPath

from pw_ray.analyze import stats
from pw_ray.analyze.external import MARK
from pw_ray.config import REGION_NAMES

DPI = 110
#: Colours of the six continents (colour-blind-friendly Okabe–Ito palette).
REGION_COLOURS = {"af": "#E69F00", "as": "#56B4E9", "eu": "#009E73", "na": "#0072B2",
                  "oc": "#D55E00", "sa": "#CC79A7", "global": "#555555"}
STATUS_COLOURS = {"ok": "#2ca02c", "skipped": "#ff7f0e", "failed": "#d62728"}
MEASURE_LABELS = {
    "continent_entropy": "continent entropy",
    "biome_entropy": "biome entropy",
    "landcover_entropy": "land-cover entropy",
    "spectral_entropy_hist": "spectral entropy (hist)",
    "spectral_entropy_codebook": "spectral entropy (codebook)",
}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", str(text)).strip("_") or "x"


def region_label(region: str) -> str:
    return REGION_NAMES.get(region, region)


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out_dir, name: str) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    fig.savefig(path, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return path


# --------------------------------------------------------------------------- figures


def _label(name, external: Iterable[str]) -> str:
    return f"{name}{MARK}" if name in set(external) else str(name)


def plot_heatmap(summary: pd.DataFrame, task: str, method: str, out_dir, external: Iterable[str] = ()) -> Path:
    """Pretraining set × task region heatmap of mean score, annotated, with a colour bar."""
    external = set(external)
    table = stats.region_table(summary, task, method)
    regions = [c for c in table.columns if c != "pretrain_set" and not c.endswith(stats.STD_SUFFIX)]
    values = table[regions].to_numpy(dtype=float)
    n_rows, n_cols = values.shape
    fig = _new_figure(1.6 + 0.95 * n_cols, 0.9 + 0.45 * n_rows)
    ax = fig.add_subplot()
    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    im = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(n_cols), [region_label(r) for r in regions], rotation=30, ha="right")
    ax.set_yticks(range(n_rows), [_label(n, external) for n in table["pretrain_set"]])
    ax.set_xlabel("task region")
    ax.set_ylabel("pretraining set")
    for i in range(n_rows):
        for j in range(n_cols):
            v = values[i, j]
            if np.isfinite(v):
                light = (v - vmin) / (vmax - vmin) > 0.6  # viridis is light at the top
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if light else "white")
            else:
                ax.text(j, i, "–", ha="center", va="center", fontsize=8, color="#777777")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="score")
    ax.set_title(f"{task} — {method}")
    return _save(fig, out_dir, f"heatmap_{slug(task)}_{slug(method)}.png")


def plot_mean_performance(table: pd.DataFrame, out_dir, name: str = "mean_performance.png",
                          title: str = "Mean performance over tasks", external: Iterable[str] = ()) -> Path:
    """Horizontal bar chart of ``mean_performance`` per pretraining set (best on top).

    The best set's bar is dark; external sets' bars are hatched and their names marked.
    """
    external = set(external)
    t = table.sort_values("mean_performance", ascending=True, kind="stable")
    fig = _new_figure(6.0, 0.8 + 0.38 * len(t))
    ax = fig.add_subplot()
    best = t["mean_performance"].max()
    colours = ["#0072B2" if v == best else "#9ecae1" for v in t["mean_performance"]]
    names = t["pretrain_set"].astype(str).tolist()
    bars = ax.barh([_label(n, external) for n in names], t["mean_performance"], color=colours)
    for bar, n, v in zip(bars, names, t["mean_performance"]):
        if n in external:
            bar.set_hatch("///")
            bar.set_edgecolor("#555555")
        if np.isfinite(v):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:.3f}",
                    va="center", fontsize=8)
    ax.set_xlabel("mean score over tasks")
    ax.set_title(title)
    ax.margins(x=0.15)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, out_dir, name)


def _correlation_title(label: str, row) -> str:
    perm = f" (perm. {stats.fmt_p(row['spearman_p_perm'])})" if "spearman_p_perm" in row.index else ""
    rho_ci = stats.fmt_ci(row["spearman_ci_low"], row["spearman_ci_high"])
    r_ci = stats.fmt_ci(row["pearson_ci_low"], row["pearson_ci_high"])
    return (f"{label}\n"
            f"ρ = {stats.fmt_num(row['spearman_rho'])} {rho_ci}, p {_p_title(row['spearman_p'])}{perm}\n"
            f"r = {stats.fmt_num(row['pearson_r'])} {r_ci}, p {_p_title(row['pearson_p'])}")


def _p_title(v) -> str:
    text = stats.fmt_p(v)
    return text if text.startswith("<") else f"= {text}"


def plot_correlations(diversity_df: pd.DataFrame, perf: pd.Series, corr_df: pd.DataFrame, out_dir,
                      external: Iterable[str] = ()) -> Path:
    """One scatter per diversity measure against mean performance: least-squares line over
    all shown sets; title with Spearman ρ and Pearson r, their bootstrap CIs and p-values.

    ``corr_df``: :func:`stats.diversity_correlations` or :func:`stats.correlation_table`
    output (its ``sets == "all"`` rows). External sets are hollow grey diamonds.
    """
    external = set(external)
    if "sets" in corr_df.columns:
        corr_df = corr_df[corr_df["sets"] == "all"]
    joined = diversity_df.set_index("pretrain_set").join(perf.rename("_perf"), how="inner")
    measures = [m for m in corr_df["measure"] if m in joined.columns]
    if not measures:
        raise ValueError("plot_correlations: no measure of corr_df is a column of diversity_df")
    ncols = min(3, len(measures))
    nrows = math.ceil(len(measures) / ncols)
    fig = _new_figure(4.3 * ncols, 3.9 * nrows + (0.3 if external else 0))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    corr = corr_df.set_index("measure")
    is_ext = np.array([n in external for n in joined.index])
    for ax, m in zip(axes, measures):
        x = joined[m].to_numpy(dtype=float)
        y = joined["_perf"].to_numpy(dtype=float)
        ok = np.isfinite(x) & np.isfinite(y)
        mine, theirs = ok & ~is_ext, ok & is_ext
        ax.scatter(x[mine], y[mine], s=30, color="#0072B2", zorder=3)
        ax.scatter(x[theirs], y[theirs], s=42, marker="D", facecolors="white", edgecolors="#555555",
                   linewidths=1.2, zorder=3)
        for name, xi, yi in zip(joined.index[ok], x[ok], y[ok]):
            ax.annotate(_label(name, external), (xi, yi), xytext=(4, 3), textcoords="offset points", fontsize=7,
                        color="#555555" if name in external else "#222222")
        if ok.sum() >= 2 and np.ptp(x[ok]) > 0:
            slope, intercept = np.polyfit(x[ok], y[ok], 1)
            xs = np.linspace(x[ok].min(), x[ok].max(), 50)
            ax.plot(xs, slope * xs + intercept, color="#D55E00", lw=1.2, zorder=2)
        ax.set_title(_correlation_title(MEASURE_LABELS.get(m, m), corr.loc[m]), fontsize=8.5)
        ax.set_xlabel(f"{MEASURE_LABELS.get(m, m)} (nats)", fontsize=8)
        ax.set_ylabel("mean performance", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.margins(x=0.18, y=0.1)  # room for the set names
        ax.grid(alpha=0.3)
    for ax in axes[len(measures):]:
        ax.set_visible(False)
    fig.tight_layout()
    if is_ext.any():
        handles = [Line2D([], [], marker="o", ls="", color="#0072B2", label="measured by pw-ray"),
                   Line2D([], [], marker="D", ls="", markerfacecolor="white", markeredgecolor="#555555",
                          color="#555555", label=f"external (published){MARK}"),
                   Line2D([], [], color="#D55E00", label="least-squares fit, all sets")]
        fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, -0.03))
    return _save(fig, out_dir, "correlations.png")


def _geojson_rings(obj) -> list[np.ndarray]:
    """All polygon rings (exteriors and holes) of a GeoJSON object as (n, 2) lon/lat arrays."""
    kind = obj.get("type")
    if kind == "FeatureCollection":
        return [r for f in obj.get("features", []) for r in _geojson_rings(f)]
    if kind == "Feature":
        return _geojson_rings(obj["geometry"]) if obj.get("geometry") else []
    if kind == "GeometryCollection":
        return [r for g in obj.get("geometries", []) for r in _geojson_rings(g)]
    if kind == "Polygon":
        return [np.asarray(ring, dtype=float)[:, :2] for ring in obj["coordinates"] if len(ring) >= 3]
    if kind == "MultiPolygon":
        return [np.asarray(ring, dtype=float)[:, :2] for poly in obj["coordinates"] for ring in poly if len(ring) >= 3]
    return []


def _outline_path(rings: Sequence[np.ndarray]) -> MplPath | None:
    if not rings:
        return None
    verts, codes = [], []
    for ring in rings:
        verts.extend(ring.tolist())
        codes.extend([MplPath.MOVETO] + [MplPath.LINETO] * (len(ring) - 1))
    return MplPath(np.asarray(verts), codes)


def plot_locations(points_df: pd.DataFrame, continents_geojson_path, out_dir,
                   max_points_per_set: int = 20000, seed: int = 0) -> Path:
    """World map per pretraining set (columns ``lon``, ``lat``, ``set``; ``region`` colours points).

    Continent outlines are drawn from ``continents_geojson_path`` when given. Sets with more
    than ``max_points_per_set`` points are subsampled (deterministically) for drawing.
    """
    stats._require(points_df, ["lon", "lat", "set"], "points table")
    outline = None
    if continents_geojson_path:
        with open(continents_geojson_path, encoding="utf-8") as f:
            outline = _outline_path(_geojson_rings(json.load(f)))
    sets = list(dict.fromkeys(points_df["set"].astype(str)))
    ncols = min(2, len(sets)) or 1
    nrows = max(1, math.ceil(len(sets) / ncols))
    fig = _new_figure(5.4 * ncols, 2.55 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    rng = np.random.default_rng(seed)
    for ax, name in zip(axes, sets):
        pts = points_df[points_df["set"].astype(str) == name]
        if len(pts) > max_points_per_set:
            pts = pts.iloc[np.sort(rng.choice(len(pts), max_points_per_set, replace=False))]
        if outline is not None:
            ax.add_patch(PathPatch(outline, facecolor="#eeeeee", edgecolor="#888888", lw=0.4, zorder=1))
        if "region" in pts.columns:
            colours = [REGION_COLOURS.get(r, "#333333") for r in pts["region"].astype(str)]
        else:
            colours = "#0072B2"
        size = float(np.clip(2000 / max(len(pts), 1), 2, 16))  # few points: big enough to see
        ax.scatter(pts["lon"], pts["lat"], s=size, c=colours, alpha=0.7, linewidths=0, zorder=2)
        ax.set_xlim(-180, 180)
        ax.set_ylim(-60, 85)
        ax.set_aspect("equal")
        ax.set_title(f"{name} ({len(points_df[points_df['set'].astype(str) == name])} points)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(sets):]:
        ax.set_visible(False)
    fig.tight_layout()
    if "region" in points_df.columns:
        present = [r for r in REGION_COLOURS if r in set(points_df["region"].astype(str))]
        handles = [Line2D([], [], marker="o", ls="", color=REGION_COLOURS[r], label=region_label(r))
                   for r in present]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, -0.02))
    return _save(fig, out_dir, "locations.png")


def stretch_rgb(chip: np.ndarray, low: float = 2, high: float = 98) -> np.ndarray:
    """(3, H, W) reflectance → (H, W, 3) float in [0, 1] by a percentile stretch over all three bands.

    One stretch for the whole chip (not per band) keeps its colour balance.
    """
    chip = np.asarray(chip, dtype=np.float64)
    lo, hi = np.percentile(chip, [low, high])
    if hi - lo < 1e-9:
        hi = lo + 1.0
    return np.clip((chip - lo) / (hi - lo), 0, 1).transpose(1, 2, 0)


def plot_chip_strip(chips_by_set: Mapping[str, np.ndarray], out_dir) -> Path:
    """A row of example chips per pretraining set.

    Each value is ``(n, 3, H, W)`` uint16 in R, G, B order (B04, B03, B02), reflectance ×1e4;
    each chip gets its own 2–98 % percentile stretch.
    """
    sets = list(chips_by_set)
    if not sets:
        raise ValueError("plot_chip_strip: no chips given")
    n_max = max(len(chips_by_set[s]) for s in sets) or 1
    fig = _new_figure(1.3 * n_max + 1.2, 1.35 * len(sets))
    axes = fig.subplots(len(sets), n_max, squeeze=False)
    for i, name in enumerate(sets):
        chips = np.asarray(chips_by_set[name])
        if chips.ndim != 4 or (len(chips) and chips.shape[1] != 3):
            raise ValueError(f"chips for {name!r} must be (n, 3, H, W) RGB, got shape {chips.shape}")
        for j in range(n_max):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(chips):
                ax.imshow(stretch_rgb(chips[j]), interpolation="nearest")
        axes[i, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.subplots_adjust(wspace=0.05, hspace=0.08)
    return _save(fig, out_dir, "chips.png")


def wide_counts(manifest_counts: pd.DataFrame) -> pd.DataFrame:
    """Accept set × status counts, or a long table with columns set, status, count."""
    if {"set", "status"} <= set(manifest_counts.columns):
        value = "count" if "count" in manifest_counts.columns else None
        if value is None:
            return manifest_counts.groupby(["set", "status"]).size().unstack(fill_value=0)
        return manifest_counts.pivot_table(index="set", columns="status", values=value,
                                           aggfunc="sum", fill_value=0)
    return manifest_counts


def plot_ingest_stats(manifest_counts: pd.DataFrame, out_dir) -> Path:
    """Stacked bars of ingest outcomes (ok / skipped / failed …) per pretraining set."""
    wide = wide_counts(manifest_counts).fillna(0)
    statuses = [s for s in ("ok", "skipped", "failed") if s in wide.columns]
    statuses += [s for s in wide.columns if s not in statuses]
    fig = _new_figure(6.5, 0.9 + 0.38 * len(wide))
    ax = fig.add_subplot()
    left = np.zeros(len(wide))
    labels = [str(i) for i in wide.index]
    for s in statuses:
        vals = wide[s].to_numpy(dtype=float)
        ax.barh(labels, vals, left=left, label=str(s), color=STATUS_COLOURS.get(str(s), "#999999"))
        left += vals
    for y, total in enumerate(left):
        ax.text(total, y, f" {int(total)}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("points")
    ax.set_title("Ingest outcome per pretraining set")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.06, 1.0), frameon=False)
    ax.set_xlim(0, max(float(left.max()), 1.0) * 1.15 if len(left) else 1.0)  # room for the totals
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, out_dir, "ingest.png")
