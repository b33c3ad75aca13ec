"""The report: a self-contained ``index.html``, a ``README.md`` with the same tables, PNGs.

:func:`write_report` draws every figure (:mod:`pw_ray.analyze.figures`) into ``out_dir``,
then writes ``index.html`` (inline CSS, no script, figures embedded as base64 ``data:``
URIs and linked to the PNG files beside it by relative path; no external URL) and
``README.md`` (the same tables in Markdown, figures by relative path). Optional inputs that
are missing make their section a short note instead. External sets (published numbers,
:mod:`pw_ray.analyze.external`) join every table, the correlations and the scatter plots,
marked ``†``.
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pw_ray.analyze import stats
from pw_ray.analyze.external import MARK, NOTE, ExternalSets
from pw_ray.analyze.figures import (MEASURE_LABELS, region_label, slug, wide_counts, plot_chip_strip,
                                    plot_correlations, plot_heatmap, plot_ingest_stats, plot_locations,
                                    plot_mean_performance)

log = logging.getLogger(__name__)

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #0072B2; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
h3 { margin-top: 1.6em; }
nav { background: #f6f8fa; border: 1px solid #e1e4e8; padding: .4em 1em; font-size: .92em; }
nav ol { margin: .2em 0; padding-left: 1.4em; columns: 2; }
a { color: #0060a0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .8em 0 1.4em; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .3em .65em; text-align: right; white-space: nowrap; }
th { background: #f2f5f8; }
td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0 2em; }
.pair { display: flex; flex-wrap: wrap; gap: 0 2em; align-items: flex-start; }
.pair > * { min-width: 0; max-width: 100%; }
.pair figure { margin-top: .8em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #555; }
.note { color: #6b5a2a; background: #fcf8e3; padding: .4em .8em; border-left: 3px solid #f0ad4e; }
code { background: #f4f4f4; padding: 0 .25em; }
"""

_DEFINITIONS = [
    "Scores: each task's headline metric (accuracy for classification, R² for regression), higher is "
    "better; mean ± sample standard deviation over seeds.",
    "Rank: per task, 0-based dense rank of each set's mean score rounded to 2 decimals (best = 0, equal "
    "rounded scores share a rank); the column is the mean over tasks. Mean performance: mean of the task "
    "scores. The same ranks per task region make the 'Rank per task region' tables.",
    "Entropies are Shannon entropies in nats (natural log): continent, biome and land-cover entropy of "
    "the set's category shares; spectral entropy (hist) = per chip, mean over bands of the entropy of "
    "the histogram of that band's values in equal-width bins (analysis.spectral_bins) over the fixed range "
    "[0, 10000], averaged over chips; spectral entropy (codebook) = per chip, entropy of its pixels' "
    "distribution over the nearest of analysis.spectral_clusters k-means codewords (fitted on pixels of "
    "every set), averaged over chips.",
    "Correlations: Spearman ρ and Pearson r of each diversity measure with the headline mean performance, "
    "over the sets that have both. p (t): two-sided p-value of no correlation (scipy; Student's t with n − 2 "
    "degrees of freedom for both ρ and r), an approximation that flatters a handful of points. p (perm.): "
    "two-sided permutation p-value of ρ, the share of re-pairings of the sets with |ρ| at least the observed "
    "one (all n! of them up to 8 sets, else 9999 random ones). CI: percentile bootstrap, resampling the sets "
    "with replacement; resamples in which a variable is constant are left out. With ten or fewer points the "
    "intervals are wide: read them before the point estimates.",
]


#: Display names of table columns (the data keep their field names).
_HEADERS = {"pretrain_set": "pretraining set", "mean_performance": "mean performance", "n_chips": "chips"}


class _Doc:
    """Builds the HTML and Markdown documents side by side."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.html: list[str] = []
        self.md: list[str] = []
        self.toc: list[tuple[str, str]] = []

    def heading(self, text: str, level: int = 2) -> None:
        anchor = slug(text).lower()
        if level == 2:
            self.toc.append((anchor, text))
        self.html.append(f'<h{level} id="{anchor}">{html.escape(text)}</h{level}>')
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
        rename = {c: _HEADERS[c] for c in df.columns if c in _HEADERS}
        df = df.rename(columns=rename)
        bold_best = {rename.get(c, c): how for c, how in (bold_best or {}).items()}
        if isinstance(digits, Mapping):
            digits = {rename.get(c, c): d for c, d in digits.items()}
        headers, rows, bold = stats.format_cells(df, bold_best, digits)
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join(
            "<tr>" + "".join(f"<td><strong>{html.escape(c)}</strong></td>" if b else f"<td>{html.escape(c)}</td>"
                             for c, b in zip(cells, flags)) + "</tr>"
            for cells, flags in zip(rows, bold))
        self.html.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
                         f"<tbody>{body}</tbody></table></div>")
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

    def page(self, title: str) -> str:
        toc = ""
        if len(self.toc) > 1:
            toc = ("<nav><strong>Contents</strong><ol>"
                   + "".join(f'<li><a href="#{a}">{html.escape(t)}</a></li>' for a, t in self.toc) + "</ol></nav>\n")
        return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
                f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
                f"<h1>{html.escape(title)}</h1>\n" + toc + "\n".join(self.html) + "\n</body>\n</html>\n")

    def markdown(self, title: str) -> str:
        return f"# {title}\n\n" + "\n".join(self.md)


ZERO = "zero"  # the untrained-encoder baseline's pretrain_set
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


def _marked(df: pd.DataFrame, external: set[str]) -> pd.DataFrame:
    """A copy of ``df`` whose ``pretrain_set`` names carry :data:`MARK` for external sets."""
    if not external:
        return df
    df = df.copy()
    df["pretrain_set"] = [f"{n}{MARK}" if n in external else n for n in df["pretrain_set"]]
    return df


def _region_columns(table: pd.DataFrame) -> dict[str, str]:
    """Region code → display name for a table's region (and ``_std``) columns."""
    regions = [c for c in table.columns if c != "pretrain_set" and not c.endswith(stats.STD_SUFFIX)]
    names = {r: region_label(r) for r in regions}
    return {**names, **{r + stats.STD_SUFFIX: n + stats.STD_SUFFIX for r, n in names.items()}}


def _correlation_display(c: pd.DataFrame) -> pd.DataFrame:
    level = c["ci_level"].iloc[0] if "ci_level" in c.columns else 0.95
    ci = f"{100 * level:g} % CI"
    n = [f"{int(k)} ({int(e)} ext.)" if e else str(int(k))
         for k, e in zip(c["n"], c["n_external"] if "n_external" in c.columns else [0] * len(c))]
    return pd.DataFrame({
        "measure": [MEASURE_LABELS.get(m, m) for m in c["measure"]],
        "n": n,
        "Spearman ρ": c["spearman_rho"].to_numpy(),
        f"ρ {ci}": [stats.fmt_ci(lo, hi) for lo, hi in zip(c["spearman_ci_low"], c["spearman_ci_high"])],
        "ρ p (t)": [stats.fmt_p(v) for v in c["spearman_p"]],
        "ρ p (perm.)": [stats.fmt_p(v) for v in c["spearman_p_perm"]] if "spearman_p_perm" in c.columns
        else ["–"] * len(c),
        "Pearson r": c["pearson_r"].to_numpy(),
        f"r {ci}": [stats.fmt_ci(lo, hi) for lo, hi in zip(c["pearson_ci_low"], c["pearson_ci_high"])],
        "r p (t)": [stats.fmt_p(v) for v in c["pearson_p"]],
    })


def write_report(out_dir, *, results: pd.DataFrame | None, diversity: pd.DataFrame | None,
                 correlations: pd.DataFrame | None, points: pd.DataFrame | None = None,
                 chips_by_set: Mapping[str, np.ndarray] | None = None,
                 manifest_counts: pd.DataFrame | None = None, continents_path=None,
                 external: ExternalSets | None = None, leakage: pd.DataFrame | None = None,
                 exclusion_m: float | None = None,
                 title: str = "pw-ray — Pretrain Where?") -> Path:
    """Write ``index.html``, ``README.md`` and the figures into ``out_dir``; return the HTML path.

    ``results``: results.parquet rows; ``diversity``: diversity.parquet rows;
    ``correlations``: :func:`stats.correlation_table` (or :func:`stats.diversity_correlations`)
    output, correlated with the headline mean performance (linear probe on the global task
    region when present); ``points``: plan points (lon, lat, set, region); ``chips_by_set``:
    example RGB chips; ``manifest_counts``: ingest outcomes per set and status;
    ``external``: external sets shown beside the measured ones; ``leakage``: the leakage audit
    (:func:`pw_ray.leakage.audit`); ``exclusion_m``: the study's exclusion distance (0: off,
    said on the first page). Any of them may be None.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = _Doc(out_dir)
    ext_names = set(external.names) if external is not None else set()
    ext_scores = external.scores if external is not None else None

    # Results given but nothing scored (no tasks, every subset too small): say so where the
    # downstream tables would be, and show the diversity measures as the whole result.
    no_scores = stats.no_scores_reason(results) if results is not None else ""
    no_results = (f"No downstream results: {no_scores}." if no_scores
                  else "Skipped: no evaluation results were given.")
    if not _empty(results) and "status" in results.columns:
        results = results[results["status"] == "ok"]  # skipped cells carry no score
    _exclusion_note(doc, leakage, exclusion_m)
    summary = None if _empty(results) else stats.with_extra(stats.summarise(results), ext_scores)
    if no_scores:
        doc.note(f"{no_results} This report shows the diversity of the pretraining sets and their chips only; "
                 "add tasks (with task-region subsets of at least evaluation.min_subset chips) to compare "
                 "the sets downstream.")
    perf = head_method = head_region = None
    if summary is not None:
        methods = sorted(summary["method"].unique(), key=lambda m: (_METHOD_ORDER.get(m, 99), m))
        tasks = sorted(summary["task"].unique())
        head_method, head_region = _headline(summary)
        n_seeds = results["seed"].nunique() if "seed" in results.columns else 1
        sets = set(summary["pretrain_set"])
        parts = ([f"{len(sets - ext_names - {ZERO})} pretraining sets"] + (["the zero baseline"] if ZERO in sets else [])
                 + ([f"{len(ext_names & sets)} external sets{MARK}"] if ext_names & sets else []))
        doc.para(" + ".join(parts) + f" · tasks: {', '.join(tasks)} · methods: {', '.join(methods)} · "
                 f"{n_seeds} seed(s) · {len(results)} evaluated cells.")

    doc.heading("Main results")
    if summary is None:
        doc.note(no_results)
    else:
        for method in methods:
            regions = summary.loc[summary["method"] == method, "task_region"].unique()
            region = "global" if "global" in regions else sorted(regions)[0]
            table = stats.main_table(results, method=method, task_region=region, extra=ext_scores)
            if method == head_method:
                perf = table.set_index("pretrain_set")["mean_performance"]
            task_cols = [c for c in table.columns if c in tasks]
            doc.heading(f"{method} — task region {region_label(region)}", 3)
            doc.table(_marked(table, ext_names),
                      {**{t: "max" for t in task_cols}, "mean_performance": "max", "rank": "min"},
                      digits={"mean_performance": 3})
            if ext_names & set(table["pretrain_set"]):
                doc.note(NOTE)
            doc.try_figure(f"Mean performance, {method}, {region_label(region)}",
                           lambda t=table, m=method: plot_mean_performance(
                               t, out_dir, name=f"mean_performance_{slug(m)}.png",
                               title=f"Mean performance over tasks — {m}", external=ext_names))

        doc.heading("Rank per task region")
        doc.para("The main table's rank column computed on each task region's subset "
                 "(mean over tasks of the 0-based dense rank; lower is better).")
        for method in methods:
            ranks = stats.region_ranks(summary, method)
            doc.heading(method, 3)
            doc.table(_marked(ranks, ext_names).rename(columns=_region_columns(ranks)),
                      {region_label(r): "min" for r in ranks.columns if r != "pretrain_set"})

    doc.heading("Per task region")
    if summary is None:
        doc.note(no_results)
    else:
        doc.para("Mean ± std over seeds of each task's score on each task region's subset; best per column in bold.")
        for method in methods:
            for task in tasks:
                if summary[(summary["method"] == method) & (summary["task"] == task)].empty:
                    continue
                table = stats.region_table(summary, task, method)
                doc.heading(f"{task} — {method}", 3)
                doc.html.append('<div class="pair">')  # table and heatmap side by side where they fit
                doc.table(_marked(table, ext_names).rename(columns=_region_columns(table)),
                          {region_label(r): "max" for r in table.columns
                           if r != "pretrain_set" and not r.endswith(stats.STD_SUFFIX)})
                doc.try_figure(f"{task}, {method}: pretraining set × task region",
                               lambda t=task, m=method: plot_heatmap(summary, t, m, out_dir, external=ext_names))
                doc.html.append("</div>")

    doc.heading("Diversity of the pretraining sets")
    div_all = diversity
    if external is not None:
        div_all = external.diversity if _empty(diversity) else pd.concat([diversity, external.diversity],
                                                                        ignore_index=True)
    if _empty(div_all):
        doc.note("Skipped: no diversity table was given.")
    else:
        measures = [m for m in stats.DIVERSITY_MEASURES if m in div_all.columns]
        cols = ["pretrain_set"] + (["n_chips"] if "n_chips" in div_all.columns else []) + measures
        shown = _marked(div_all[cols], ext_names).rename(columns=MEASURE_LABELS).reset_index(drop=True)
        if "n_chips" in shown.columns:
            shown["n_chips"] = shown["n_chips"].astype("Int64")
        doc.table(shown, {MEASURE_LABELS[m]: "max" for m in measures}, digits=3)
        if ext_names:
            doc.note(NOTE)

    doc.heading("Diversity and performance")
    if _empty(correlations):
        doc.note("No downstream results, so no correlation with performance." if no_scores
                 else "Skipped: no correlation table was given.")
    else:
        c = correlations
        n_boot = int(c["n_boot"].iloc[0]) if "n_boot" in c.columns else None
        doc.para("Correlation of each diversity measure with mean performance"
                 + (f" ({head_method} probe, task region {region_label(head_region)})" if head_method else "")
                 + "; p (t): two-sided t-test p-value; p (perm.): permutation p-value of ρ; CI: percentile bootstrap"
                 + (f" over {n_boot} resamples of the sets" if n_boot else "") + ".")
        if "sets" in c.columns and (c["sets"] == "measured").any():
            doc.heading("All sets (measured and external)", 3)
            doc.table(_correlation_display(c[c["sets"] == "all"]))
            doc.heading("Measured sets only", 3)
            doc.table(_correlation_display(c[c["sets"] == "measured"]))
        else:
            doc.table(_correlation_display(c[c["sets"] == "all"] if "sets" in c.columns else c))
        if perf is not None and not _empty(div_all):
            doc.try_figure("Diversity measures against mean performance "
                           f"({head_method}, {region_label(head_region)}); title: Spearman ρ and Pearson r "
                           "with bootstrap CI and p-value",
                           lambda: plot_correlations(div_all, perf, c, out_dir, external=ext_names))
        else:
            doc.note("Scatter plots skipped: they need both results and the diversity table.")

    if external is not None:
        doc.heading("External sets")
        doc.para("Sets pw-ray did not build, with published diversity values and scores "
                 "(analysis.external_sets); they sit beside the measured sets in every table, the "
                 "correlations and the scatter plots, marked †.")
        t = external.table
        doc.table(pd.DataFrame({
            "name": t["name"], "method": t["method"], "task region": t["task_region"],
            "tasks": [", ".join(k for k in external.tasks if np.isfinite(row[k])) or "–"
                      for row in t.to_dict("records")],
            "source": t["source"] if "source" in t.columns else "",
        }))

    doc.heading("Where the pretraining chips come from")
    if _empty(points):
        doc.note("Skipped: no points table was given.")
    else:
        if not continents_path:
            doc.note("No continent outlines given; points only.")
        doc.try_figure("Sampled locations per pretraining set",
                       lambda: plot_locations(points, continents_path, out_dir))

    _leakage_section(doc, leakage)

    doc.heading("Example chips")
    if not chips_by_set:
        doc.note("Skipped: no example chips were given.")
    else:
        doc.try_figure("Example chips (RGB from B04, B03, B02; 2–98 % stretch per chip)",
                       lambda: plot_chip_strip(chips_by_set, out_dir))

    doc.heading("Ingest")
    if _empty(manifest_counts):
        doc.note("Skipped: no ingest manifest counts were given.")
    else:
        wide = wide_counts(manifest_counts)
        doc.table(wide.rename_axis("set").reset_index().rename(columns=str))
        doc.try_figure("Ingest outcome per pretraining set", lambda: plot_ingest_stats(manifest_counts, out_dir))

    doc.heading("Definitions")
    doc.bullets(_DEFINITIONS)

    index = out_dir / "index.html"
    _atomic_write(index, doc.page(title))
    _atomic_write(out_dir / "README.md", doc.markdown(title))
    log.info("report written to %s", index)
    return index


def _exclusion_note(doc: _Doc, audit: pd.DataFrame | None, exclusion_m: float | None) -> None:
    """First-page line on leakage: a warning when the study ran without exclusion."""
    off = exclusion_m == 0 or (not _empty(audit) and not bool(audit["exclusion"].all()))
    close = 0 if _empty(audit) else int(audit.loc[audit["split"] == "test", "n_held_out_within"].sum())
    if off:
        dist = "" if _empty(audit) else f" {audit['distance_m'].iloc[0]:.0f} m (the chip-overlap distance) of"
        doc.note("Exclusion was off (plan.exclusion_m = 0): pretraining points were not kept away from the "
                 "downstream test areas, so scores may partly measure memorised places. "
                 + ("" if _empty(audit) else f"The leakage audit counts {close} (pretraining set, test chip) "
                                             f"pairs with a test chip within{dist} a pretraining chip."))
    elif not _empty(audit):
        doc.para(f"Leakage: every pretraining point was planned more than {audit['distance_m'].iloc[0]:.0f} m "
                 f"from every held-out task point; the audit finds {close} test chips within that distance "
                 "(see Leakage audit).")


def _leakage_section(doc: _Doc, audit: pd.DataFrame | None) -> None:
    doc.heading("Leakage audit")
    if _empty(audit):
        doc.note("Skipped: no leakage audit was given.")
        return
    on = bool(audit["exclusion"].all())
    doc.para("Distance from each held-out task chip to its nearest pretraining chip (great circle, metres; "
             "chip centres are the planned points): minimum, 1st percentile and median over the held-out chips; "
             f"'within' counts chips closer than {audit['distance_m'].iloc[0]:.0f} m — held-out chips with a "
             "pretraining chip that close, and pretraining chips with a held-out chip that close. "
             + ("Exclusion was on, so both are 0 by construction; 'replaced' is the number of pretraining "
                "candidates plan dropped for lying too close." if on else
                "Exclusion was off: the distance is the chip-overlap distance (chip diagonal + 2 pixels)."))
    shown = pd.DataFrame({
        "pretrain_set": audit["pretrain_set"], "task": audit["task"], "split": audit["split"],
        "held-out chips": audit["n_held_out"].astype("Int64"), "min (m)": audit["min_distance_m"],
        "1st pct (m)": audit["p01_distance_m"], "median (m)": audit["median_distance_m"],
        "held-out within": audit["n_held_out_within"].astype("Int64"),
        "pretraining within": audit["n_pretrain_within"].astype("Int64"),
        "replaced at plan": audit["replaced"].astype("Int64") if "replaced" in audit.columns else pd.NA,
    })
    doc.table(shown.reset_index(drop=True), digits=0)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
