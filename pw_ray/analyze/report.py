"""The report: PNG figures, a self-contained ``index.html`` and a ``README.md``.

Figures are drawn with matplotlib's Agg canvas directly (no pyplot, so no global figure
state and no display needed). Each ``plot_*`` function writes one PNG into ``out_dir`` and
returns its path. :func:`write_report` writes every figure, then ``index.html`` (inline CSS,
figures embedded as base64 ``data:`` URIs and linked to the PNG files beside it by relative
path; no external URL) and ``README.md`` (the same tables in Markdown, figures by relative
path). Optional inputs that are missing make their section a short note instead.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import PathPatch
from matplotlib.path import Path as MplPath

from pw_ray.analyze import stats
from pw_ray.config import REGION_NAMES

log = logging.getLogger(__name__)

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


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", str(text)).strip("_") or "x"


def _region_label(region: str) -> str:
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


def plot_heatmap(summary: pd.DataFrame, task: str, method: str, out_dir) -> Path:
    """Pretraining set × task region heatmap of mean score, annotated, with a colour bar."""
    table = stats.region_table(summary, task, method)
    regions = [c for c in table.columns if c != "pretrain_set" and not c.endswith(stats.STD_SUFFIX)]
    values = table[regions].to_numpy(dtype=float)
    n_rows, n_cols = values.shape
    fig = _new_figure(1.2 + 0.95 * n_cols, 0.9 + 0.45 * n_rows)
    ax = fig.add_subplot()
    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    im = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(n_cols), [_region_label(r) for r in regions], rotation=30, ha="right")
    ax.set_yticks(range(n_rows), table["pretrain_set"].tolist())
    ax.set_xlabel("task region")
    ax.set_ylabel("pretraining set")
    for i in range(n_rows):
        for j in range(n_cols):
            v = values[i, j]
            if np.isfinite(v):
                light = (v - vmin) / (vmax - vmin) > 0.6  # viridis is light at the top
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if light else "white")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="score")
    ax.set_title(f"{task} — {method}")
    return _save(fig, out_dir, f"heatmap_{_slug(task)}_{_slug(method)}.png")


def plot_mean_performance(table: pd.DataFrame, out_dir, name: str = "mean_performance.png",
                          title: str = "Mean performance over tasks") -> Path:
    """Horizontal bar chart of ``mean_performance`` per pretraining set (best on top)."""
    t = table.sort_values("mean_performance", ascending=True, kind="stable")
    fig = _new_figure(6.0, 0.8 + 0.38 * len(t))
    ax = fig.add_subplot()
    best = t["mean_performance"].max()
    colours = ["#0072B2" if v == best else "#9ecae1" for v in t["mean_performance"]]
    bars = ax.barh(t["pretrain_set"].astype(str), t["mean_performance"], color=colours)
    for bar, v in zip(bars, t["mean_performance"]):
        if np.isfinite(v):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:.3f}",
                    va="center", fontsize=8)
    ax.set_xlabel("mean score over tasks")
    ax.set_title(title)
    ax.margins(x=0.15)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, out_dir, name)


def plot_correlations(diversity_df: pd.DataFrame, perf: pd.Series, corr_df: pd.DataFrame, out_dir) -> Path:
    """One scatter per diversity measure against mean performance, least-squares line, ρ [CI]."""
    joined = diversity_df.set_index("pretrain_set").join(perf.rename("_perf"), how="inner")
    measures = [m for m in corr_df["measure"] if m in joined.columns]
    if not measures:
        raise ValueError("plot_correlations: no measure of corr_df is a column of diversity_df")
    ncols = min(3, len(measures))
    nrows = math.ceil(len(measures) / ncols)
    fig = _new_figure(4.2 * ncols, 3.6 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    corr = corr_df.set_index("measure")
    for ax, m in zip(axes, measures):
        x = joined[m].to_numpy(dtype=float)
        y = joined["_perf"].to_numpy(dtype=float)
        ok = np.isfinite(x) & np.isfinite(y)
        ax.scatter(x[ok], y[ok], s=28, color="#0072B2", zorder=3)
        for name, xi, yi in zip(joined.index[ok], x[ok], y[ok]):
            ax.annotate(str(name), (xi, yi), xytext=(4, 3), textcoords="offset points", fontsize=7)
        if ok.sum() >= 2 and np.ptp(x[ok]) > 0:
            slope, intercept = np.polyfit(x[ok], y[ok], 1)
            xs = np.linspace(x[ok].min(), x[ok].max(), 50)
            ax.plot(xs, slope * xs + intercept, color="#D55E00", lw=1.2, zorder=2)
        r = corr.loc[m]
        ax.set_title(f"{MEASURE_LABELS.get(m, m)}\nρ = {_num(r['spearman_rho'])} "
                     f"[{_num(r['spearman_ci_low'])}, {_num(r['spearman_ci_high'])}], "
                     f"p {_p_title(r['spearman_p'])}", fontsize=9)
        ax.set_xlabel(f"{MEASURE_LABELS.get(m, m)} (nats)", fontsize=8)
        ax.set_ylabel("mean performance", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.margins(x=0.18, y=0.1)  # room for the set names
        ax.grid(alpha=0.3)
    for ax in axes[len(measures):]:
        ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, out_dir, "correlations.png")


def _num(v, digits: int = 2) -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "–"
    return f"{v:.{digits}f}" if math.isfinite(v) else "–"


def _p_value(v) -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "–"
    if not math.isfinite(v):
        return "–"
    return "< 0.001" if v < 0.001 else f"{v:.3f}"


def _p_title(v) -> str:
    text = _p_value(v)
    return text if text.startswith("<") else f"= {text}"


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
        ax.scatter(pts["lon"], pts["lat"], s=3, c=colours, alpha=0.7, linewidths=0, zorder=2)
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
        handles = [Line2D([], [], marker="o", ls="", color=REGION_COLOURS[r], label=_region_label(r))
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


def _wide_counts(manifest_counts: pd.DataFrame) -> pd.DataFrame:
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
    wide = _wide_counts(manifest_counts).fillna(0)
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
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.margins(x=0.12)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, out_dir, "ingest.png")


# --------------------------------------------------------------------------- documents

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #0072B2; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .8em 0 1.4em; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .3em .65em; text-align: right; }
th { background: #f2f5f8; }
td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #555; }
.note { color: #8a6d3b; background: #fcf8e3; padding: .4em .8em; border-left: 3px solid #f0ad4e; }
code { background: #f4f4f4; padding: 0 .25em; }
"""

_DEFINITIONS = [
    "Scores: accuracy (classification) or R² (regression), higher is better; mean ± sample std over seeds.",
    "Rank: per task, 0-based dense rank of each set's mean score rounded to 2 decimals (best = 0); "
    "the column is the mean over tasks. Mean performance: mean of the task scores.",
    "Entropies are Shannon entropies in nats (natural log): continent, biome and land-cover entropy of "
    "the set's category shares; spectral entropy (hist) = per chip, mean over bands of the entropy of "
    "the histogram of that band's values in equal-width bins (analysis.spectral_bins) over the fixed range "
    "[0, 10000], averaged over chips; spectral entropy "
    "(codebook) = per chip, entropy of its pixels' distribution over the nearest k-means codewords, "
    "averaged over chips.",
]


class _Doc:
    """Builds the HTML and Markdown documents side by side."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.html: list[str] = []
        self.md: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")
        self.md.append(f"{'#' * level} {text}\n")

    def para(self, text: str) -> None:
        self.html.append(f"<p>{html.escape(text)}</p>")
        self.md.append(f"{text}\n")

    def bullets(self, items: Sequence[str]) -> None:
        self.html.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
        self.md.append("".join(f"- {i}\n" for i in items))

    def note(self, text: str) -> None:
        self.html.append(f'<p class="note">{html.escape(text)}</p>')
        self.md.append(f"_{text}_\n")

    def table(self, df: pd.DataFrame, bold_best: Mapping[str, str] | None = None,
              digits: int | Mapping[str, int] = 2) -> None:
        headers, rows, bold = stats.format_cells(df, bold_best, digits)
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join(
            "<tr>" + "".join(f"<td><strong>{html.escape(c)}</strong></td>" if b else f"<td>{html.escape(c)}</td>"
                             for c, b in zip(cells, flags)) + "</tr>"
            for cells, flags in zip(rows, bold))
        self.html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        self.md.append(stats.to_markdown(df, bold_best, digits))

    def figure(self, path: Path, caption: str) -> None:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        rel = path.relative_to(self.out_dir).as_posix()
        self.html.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption, quote=True)}">'
            f'<figcaption>{html.escape(caption)} (<a href="{html.escape(rel, quote=True)}">'
            f"{html.escape(rel)}</a>)</figcaption></figure>")
        self.md.append(f"![{caption}]({rel})\n")

    def try_figure(self, caption: str, make) -> None:
        """Draw a figure; a failure becomes a note rather than losing the whole report."""
        try:
            self.figure(make(), caption)
        except Exception as err:  # noqa: BLE001 — one bad figure must not sink the report
            log.warning("report: figure %r failed: %s", caption, err)
            self.note(f"Figure '{caption}' could not be drawn: {err}")


_METHOD_ORDER = {"linear": 0, "knn": 1, "finetune": 2}  # the paper's headline method first


def _headline(summary: pd.DataFrame) -> tuple[str, str]:
    """The method and task region of the headline numbers: linear on global when present."""
    methods = list(summary["method"].unique())
    method = "linear" if "linear" in methods else sorted(methods)[0]
    regions = list(summary.loc[summary["method"] == method, "task_region"].unique())
    region = "global" if "global" in regions else sorted(regions)[0]
    return method, region


def _empty(df) -> bool:
    return df is None or len(df) == 0


def write_report(out_dir, *, results: pd.DataFrame | None, diversity: pd.DataFrame | None,
                 correlations: pd.DataFrame | None, points: pd.DataFrame | None = None,
                 chips_by_set: Mapping[str, np.ndarray] | None = None,
                 manifest_counts: pd.DataFrame | None = None, continents_path=None,
                 title: str = "pw-ray — Pretrain Where?") -> Path:
    """Write ``index.html``, ``README.md`` and the figures into ``out_dir``; return the HTML path.

    ``results``: results.parquet rows; ``diversity``: diversity.parquet rows;
    ``correlations``: :func:`stats.diversity_correlations` output (correlated with the
    headline mean performance: linear probe on the global task region when present);
    ``points``: plan points (lon, lat, set, region); ``chips_by_set``: example RGB chips;
    ``manifest_counts``: ingest outcomes per set and status. Any of them may be None.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = _Doc(out_dir)

    if not _empty(results) and "status" in results.columns:
        results = results[results["status"] == "ok"]  # skipped cells carry no score
    summary = None if _empty(results) else stats.summarise(results)
    perf = None
    if summary is not None:
        methods = sorted(summary["method"].unique(), key=lambda m: (_METHOD_ORDER.get(m, 99), m))
        tasks = sorted(summary["task"].unique())
        head_method, head_region = _headline(summary)
        n_seeds = results["seed"].nunique() if "seed" in results.columns else 1
        doc.para(f"{summary['pretrain_set'].nunique()} pretraining sets · tasks: {', '.join(tasks)} · "
                 f"methods: {', '.join(methods)} · {n_seeds} seed(s) · {len(results)} evaluated cells.")

    doc.heading("Main results")
    if summary is None:
        doc.note("Skipped: no evaluation results were given.")
    else:
        for method in methods:
            regions = summary.loc[summary["method"] == method, "task_region"].unique()
            region = "global" if "global" in regions else sorted(regions)[0]
            table = stats.main_table(results, method=method, task_region=region)
            if method == head_method:
                perf = table.set_index("pretrain_set")["mean_performance"]
            task_cols = [c for c in table.columns if c in tasks]
            doc.heading(f"{method} — task region {_region_label(region)}", 3)
            doc.table(table, {**{t: "max" for t in task_cols}, "mean_performance": "max", "rank": "min"},
                      digits={"mean_performance": 3})
            doc.try_figure(f"Mean performance, {method}, {_region_label(region)}",
                           lambda t=table, m=method: plot_mean_performance(
                               t, out_dir, name=f"mean_performance_{_slug(m)}.png",
                               title=f"Mean performance over tasks — {m}"))

    doc.heading("Per task region")
    if summary is None:
        doc.note("Skipped: no evaluation results were given.")
    else:
        for method in methods:
            for task in tasks:
                if summary[(summary["method"] == method) & (summary["task"] == task)].empty:
                    continue
                table = stats.region_table(summary, task, method)
                regions = [c for c in table.columns if c != "pretrain_set" and not c.endswith(stats.STD_SUFFIX)]
                doc.heading(f"{task} — {method}", 3)
                doc.table(table.rename(columns={**{r: _region_label(r) for r in regions},
                                                **{r + stats.STD_SUFFIX: _region_label(r) + stats.STD_SUFFIX
                                                   for r in regions}}),
                          {_region_label(r): "max" for r in regions})
                doc.try_figure(f"{task}, {method}: pretraining set × task region",
                               lambda t=task, m=method: plot_heatmap(summary, t, m, out_dir))

    doc.heading("Diversity of the pretraining sets")
    if _empty(diversity):
        doc.note("Skipped: no diversity table was given.")
    else:
        measures = [m for m in stats.DIVERSITY_MEASURES if m in diversity.columns]
        cols = ["pretrain_set"] + (["n_chips"] if "n_chips" in diversity.columns else []) + measures
        doc.table(diversity[cols].rename(columns=MEASURE_LABELS).reset_index(drop=True),
                  {MEASURE_LABELS[m]: "max" for m in measures}, digits=3)

    doc.heading("Diversity and performance")
    if _empty(correlations):
        doc.note("Skipped: no correlation table was given.")
    else:
        c = correlations
        display = pd.DataFrame({
            "measure": [MEASURE_LABELS.get(m, m) for m in c["measure"]],
            "n": c["n"].astype(int),
            "Spearman ρ": c["spearman_rho"],
            "ρ CI": [f"[{_num(lo)}, {_num(hi)}]" for lo, hi in zip(c["spearman_ci_low"], c["spearman_ci_high"])],
            "ρ p": [_p_value(v) for v in c["spearman_p"]],
            "Pearson r": c["pearson_r"],
            "r CI": [f"[{_num(lo)}, {_num(hi)}]" for lo, hi in zip(c["pearson_ci_low"], c["pearson_ci_high"])],
            "r p": [_p_value(v) for v in c["pearson_p"]],
        })
        doc.table(display, {"Spearman ρ": "max"})
        if perf is not None and not _empty(diversity):
            doc.try_figure("Diversity measures against mean performance "
                           f"({head_method}, {_region_label(head_region)})",
                           lambda: plot_correlations(diversity, perf, correlations, out_dir))
        else:
            doc.note("Scatter plots skipped: they need both results and the diversity table.")

    doc.heading("Where the pretraining chips come from")
    if _empty(points):
        doc.note("Skipped: no points table was given.")
    else:
        if not continents_path:
            doc.note("No continent outlines given; points only.")
        doc.try_figure("Sampled locations per pretraining set",
                       lambda: plot_locations(points, continents_path, out_dir))

    doc.heading("Example chips")
    if not chips_by_set:
        doc.note("Skipped: no example chips were given.")
    else:
        doc.try_figure("Example chips (RGB, 2–98 % stretch per chip)",
                       lambda: plot_chip_strip(chips_by_set, out_dir))

    doc.heading("Ingest")
    if _empty(manifest_counts):
        doc.note("Skipped: no ingest manifest counts were given.")
    else:
        wide = _wide_counts(manifest_counts)
        doc.table(wide.rename_axis("set").reset_index().rename(columns=str))
        doc.try_figure("Ingest outcome per pretraining set", lambda: plot_ingest_stats(manifest_counts, out_dir))

    doc.heading("Definitions")
    doc.bullets(_DEFINITIONS)

    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n" + "\n".join(doc.html) + "\n</body>\n</html>\n")
    index = out_dir / "index.html"
    _atomic_write(index, page)
    _atomic_write(out_dir / "README.md", f"# {title}\n\n" + "\n".join(doc.md))
    log.info("report written to %s", index)
    return index


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
