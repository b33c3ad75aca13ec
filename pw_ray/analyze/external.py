"""External pretraining sets: published diversity values and scores beside the measured sets.

pw-ray measures the sets it builds; a paper's other sets (FMoW-Sentinel, SSL4EO-S12,
SSL4Eco …) are known only by their published numbers. ``analysis.external_sets`` names a
CSV of such rows, one per set (or per set, method and task region)::

    name,source,continent_entropy,biome_entropy,landcover_entropy,spectral_entropy_hist,landcover,landcover_std,population
    ssl4eo_s12,"Author et al. (year), Table 2",1.70,2.10,1.80,2.05,0.41,0.02,0.30

Columns:

- ``name`` (required): the set's name; must differ from the measured sets and ``zero``.
- diversity measures, any of :data:`stats.DIVERSITY_MEASURES` (nats); a blank or absent
  one is missing, and that set drops out of that measure's correlation only. A bare
  ``spectral_entropy`` is refused: say which variant's definition the value follows.
- ``method`` (default ``linear``) and ``task_region`` (default ``global``): which cell of
  the evaluation grid the scores belong to; several rows per name give several cells
  (their diversity values must then agree or be blank).
- ``source`` (optional): where the numbers come from; shown in the report.
- every other column is a task score named after the task (the experiment's task names,
  so the external set's mean performance averages the same tasks), with an optional
  ``<task>_std`` beside it.

:func:`parse_external_sets` validates such a frame and :class:`ExternalSets` exposes it as
diversity rows and as ``summarise``-shaped score rows, so every table, correlation and
figure can treat external sets like measured ones.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pw_ray import storage
from pw_ray.analyze.stats import DIVERSITY_MEASURES, STD_SUFFIX

log = logging.getLogger(__name__)

DEFAULT_METHOD = "linear"
DEFAULT_TASK_REGION = "global"
KEY_COLUMNS = ["name", "method", "task_region"]
RESERVED = set(KEY_COLUMNS) | {"source"}
#: Appended to an external set's name wherever it is displayed.
MARK = " †"
NOTE = ("† external set: published values read from the external-sets CSV "
        "(analysis.external_sets), not measured by pw-ray.")


@dataclass(frozen=True)
class ExternalSets:
    """Validated external rows (``table``: the CSV with ``method``/``task_region`` filled in)."""

    table: pd.DataFrame

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys(self.table["name"]))

    @property
    def tasks(self) -> list[str]:
        return [c for c in self.table.columns
                if c not in RESERVED and c not in DIVERSITY_MEASURES and not c.endswith(STD_SUFFIX)]

    @property
    def diversity(self) -> pd.DataFrame:
        """One row per set: ``pretrain_set``, every diversity measure (NaN where not given)."""
        rows = self.table.groupby("name", sort=False)[DIVERSITY_MEASURES].first()  # first non-NaN
        return rows.rename_axis("pretrain_set").reset_index()

    @property
    def scores(self) -> pd.DataFrame:
        """``stats.summarise``-shaped rows: pretrain_set, task, task_region, method, score_mean,
        score_std (NaN when not given) and n_seeds (NaN: unknown)."""
        rows = []
        for rec in self.table.to_dict("records"):
            for task in self.tasks:
                v = rec[task]
                if np.isfinite(v):
                    rows.append({"pretrain_set": rec["name"], "task": task, "task_region": rec["task_region"],
                                 "method": rec["method"], "score_mean": float(v),
                                 "score_std": float(rec.get(task + STD_SUFFIX, np.nan)), "n_seeds": np.nan})
        return pd.DataFrame(rows, columns=["pretrain_set", "task", "task_region", "method",
                                           "score_mean", "score_std", "n_seeds"])

    def check_against(self, measured_sets: Iterable[str], tasks: Iterable[str] | None = None) -> None:
        """Refuse names that clash with measured sets; warn about task columns the experiment lacks."""
        clash = sorted(set(self.names) & set(measured_sets))
        if clash:
            raise ValueError(f"external sets {clash} have the names of measured sets; rename them in the CSV "
                             "(names must differ from every pretraining set and 'zero')")
        if tasks is not None:
            unknown = [t for t in self.tasks if t not in set(tasks)]
            if unknown:
                log.warning("external sets: task columns %s are not tasks of this experiment (%s); their scores "
                            "enter the external sets' mean performance but no measured set has them",
                            unknown, sorted(tasks))


def parse_external_sets(df: pd.DataFrame, origin: str = "external sets") -> ExternalSets:
    """Validate a frame of external rows (see the module docstring); errors name row and column."""
    df = df.copy()
    df.columns = [str(c).strip() for c in df.columns]
    if "name" not in df.columns:
        raise ValueError(f"{origin}: needs a 'name' column; has {list(df.columns)}. Expected: name, diversity "
                         f"columns ({', '.join(DIVERSITY_MEASURES)}), task score columns, optionally "
                         "<task>_std, method, task_region, source")
    if "spectral_entropy" in df.columns:
        raise ValueError(f"{origin}: column 'spectral_entropy' is ambiguous; name it spectral_entropy_hist or "
                         "spectral_entropy_codebook after the variant whose definition the value follows")
    dup = [c for c in df.columns if list(df.columns).count(c) > 1]
    if dup:
        raise ValueError(f"{origin}: duplicate columns {sorted(set(dup))}")
    line = lambda i: i + 2  # noqa: E731 — CSV line of row i (line 1 is the header)
    names = df["name"].astype("string").str.strip()
    blank = names.isna() | (names == "")
    if blank.any():
        raise ValueError(f"{origin}: empty name on line {line(int(np.flatnonzero(blank)[0]))}")
    df["name"] = names.astype(str)
    for col, default in (("method", DEFAULT_METHOD), ("task_region", DEFAULT_TASK_REGION)):
        if col not in df.columns:
            df[col] = default
        df[col] = df[col].astype("string").str.strip().fillna(default).replace("", default).astype(str)
    if "source" in df.columns:
        df["source"] = df["source"].astype("string").fillna("").astype(str)
    value_cols = [c for c in df.columns if c not in RESERVED]
    orphans = [c for c in value_cols if c.endswith(STD_SUFFIX) and c[: -len(STD_SUFFIX)] not in df.columns]
    if orphans:
        raise ValueError(f"{origin}: {orphans} have no score column beside them (a <task>_std needs <task>)")
    for col in value_cols:
        raw = df[col]
        num = pd.to_numeric(raw, errors="coerce")
        bad = num.isna() & raw.notna() & (raw.astype(str).str.strip() != "")
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{origin}: line {line(i)}, column {col!r}: {raw.iloc[i]!r} is not a number")
        if col in DIVERSITY_MEASURES and (num < 0).any():
            i = int(np.flatnonzero(num < 0)[0])
            raise ValueError(f"{origin}: line {line(i)}, column {col!r}: entropies are ≥ 0 nats, got {num.iloc[i]}")
        df[col] = num.astype(float)
    for m in DIVERSITY_MEASURES:
        if m not in df.columns:
            df[m] = np.nan
    dups = df.duplicated(KEY_COLUMNS, keep=False)
    if dups.any():
        i = int(np.flatnonzero(dups)[0])
        raise ValueError(f"{origin}: more than one row for name={df['name'].iloc[i]!r}, "
                         f"method={df['method'].iloc[i]!r}, task_region={df['task_region'].iloc[i]!r} "
                         f"(line {line(i)}); give each (name, method, task_region) once")
    for m in DIVERSITY_MEASURES:
        spread = df.groupby("name")[m].agg(lambda v: v.dropna().nunique())
        if (spread > 1).any():
            raise ValueError(f"{origin}: set {spread[spread > 1].index[0]!r} has different {m} values on "
                             "different rows; give it once (the other rows may leave it blank)")
    ext = ExternalSets(df.reset_index(drop=True))
    if not ext.tasks:
        log.warning("%s: no task score columns; external sets appear in the diversity table only", origin)
    return ext


def read_external_sets(uri: str) -> ExternalSets:
    """Read and validate an external-sets CSV (local path or any storage URI)."""
    try:
        text = storage.read_text(uri)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"analysis.external_sets: no file at {uri}") from err
    df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""], skipinitialspace=True)
    return parse_external_sets(df, origin=uri)


def mark(name: str, external: Iterable[str]) -> str:
    """``name`` with :data:`MARK` appended when it is an external set."""
    return f"{name}{MARK}" if name in set(external) else name
