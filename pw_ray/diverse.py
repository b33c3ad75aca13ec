"""The spectral-diverse builder: the pretraining set of highest spectral entropy for a budget of points.

``strategy: spectral-diverse`` answers "I can afford N chips: which N?" in three steps, each a
function here or in :mod:`pw_ray.ingest.signatures`, so that a step can be swapped or one
added between them:

1. :func:`candidate_pool`: ``candidates`` × N points drawn exactly as a random set of that size
   would be (the set's region weights, seed, coverage, minimum spacing, and the exclusion around
   held-out task points, :func:`pw_ray.plan.sample_away`): no candidate near a test point ever
   reaches the signatures or the selection;
2. a cheap signature per candidate (:func:`pw_ray.ingest.signatures.signature_table`): the
   per-band histograms of its chip read from the COGs' overviews, and their score;
3. :func:`select_diverse`: N candidates, per continent as many as a random set has, maximising
   the set's spectral entropy; :func:`chosen_points` gives them the ids of a points table.

**The objective.** analyze measures two spectral entropies (``pw_ray.analyze.diversity``), both
*sample-level*: a set's value is the mean of its chips' values. The builder maximises variant
"hist" (per-band histograms on a fixed 0–10000 range), because a chip's "hist" entropy is a fixed
function of its own pixels, so the signature estimates exactly the number analyze will report;
a chip's "codebook" entropy depends on a codebook that analyze fits afterwards on pixels pooled
from every set compared, the chosen set included, which does not exist when the set is planned.

Because the set value is a mean of chip values, the objective is modular (adding a chip adds
its own value, whatever else is in the set): under per-continent counts the best N are the
highest-scoring candidates of each continent, exactly, and greedy selection in score order is
that optimum. A minimum spacing makes it a maximum-weight independent set, NP-hard in general;
the same greedy pass (skip a candidate within the spacing of one already chosen) keeps the
higher-scoring of two close candidates, which is optimal when conflicts are isolated pairs or
clusters and a heuristic otherwise (conflicts are rare when the spacing is a chip's width and
candidates are spread over continents).

Determinism: the pool is seeded like any set; selection sorts by score with ties broken by pool
order, so the same inputs give the same points.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from pw_ray.config import CONTINENTS, PretrainSet
from pw_ray.plan import Sampled, _chord_for, continent_counts, sample_away, unit_vectors

log = logging.getLogger(__name__)

#: The strategy name of the builder in ``pretrain_sets[].strategy``.
STRATEGY = "spectral-diverse"
#: Columns of a candidate as :func:`pw_ray.plan.sample_points` draws it (and of the chosen points).
POOL_COLUMNS = ["point_id", "set", "lon", "lat", "region", "seed"]


def candidate_pool(pset: PretrainSet, coverage: dict | None = None, min_spacing_m: float = 0.0, *,
                   held_out: pd.DataFrame | None = None, exclusion_m: float = 0.0) -> Sampled:
    """``pset.candidates × pset.size`` points drawn like a random set of that size (same weights,
    seed, coverage, spacing and exclusion from ``held_out``: :func:`pw_ray.plan.sample_away`), and
    the candidates the exclusion replaced per continent; ``point_id`` ``<set>-candidate-<i>``."""
    return sample_away(pset.weights(), pset.candidates * pset.size, pset.seed, coverage=coverage,
                       min_spacing_m=min_spacing_m, set_name=f"{pset.name}-candidate", held_out=held_out,
                       exclusion_m=exclusion_m)


def select_diverse(candidates: pd.DataFrame, scores, counts: dict[str, int],
                   min_spacing_m: float = 0.0) -> np.ndarray:
    """Which candidates form the set: positions into ``candidates``, continents in ``CONTINENTS``
    order and, within one, best score first.

    candidates: frame with ``lon``, ``lat`` (degrees) and ``region`` (continent code).
    scores: (len(candidates),) float, the candidate's estimated spectral entropy (nats); NaN for a
        candidate without a signature (no usable scene): those come only after every candidate
        with one, in pool order, to fill a continent that has too few (they will be skipped or
        retried at ingest; a warning says so).
    counts: continent → number of points (:func:`pw_ray.plan.continent_counts` of the set's weights).
    min_spacing_m: no two chosen points closer than this great-circle distance (metres).

    Greedy in descending score (ties: pool order): a candidate is taken unless its continent is
    full or it lies within ``min_spacing_m`` of one already taken. Raises ``ValueError`` naming the
    continent when the pool cannot fill its count.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = len(candidates)
    if scores.shape != (n,):
        raise ValueError(f"scores has shape {scores.shape}; expected ({n},), one per candidate")
    region = candidates["region"].to_numpy().astype(str)
    unknown = sorted(set(counts) - set(CONTINENTS))
    if unknown:
        raise ValueError(f"counts name unknown continents {unknown}; allowed: {', '.join(CONTINENTS)}")
    has_score = np.isfinite(scores)
    # Scored candidates by descending score, then the unscored in pool order; stable: ties by pool order.
    order = np.lexsort((np.arange(n), np.where(has_score, -scores, np.inf), ~has_score))
    left = {r: int(c) for r, c in counts.items() if c > 0}
    chosen = np.zeros(n, dtype=bool)
    neighbours = _neighbours(candidates, min_spacing_m)
    for i in order:
        r = region[i]
        if left.get(r, 0) <= 0:
            continue
        if neighbours is not None and chosen[neighbours[neighbours.indptr[i]:neighbours.indptr[i + 1]]].any():
            continue
        chosen[i] = True
        left[r] -= 1
        if not any(left.values()):
            break
    short = {r: c for r, c in left.items() if c > 0}
    if short:
        have = {r: int((region == r).sum()) for r in short}
        raise ValueError("the candidate pool cannot fill " + ", ".join(
            f"region {r!r} ({counts[r] - c} of {counts[r]} placed from {have[r]} candidates)" for r, c in short.items())
            + (f" at least {min_spacing_m:.0f} m apart" if min_spacing_m > 0 else "")
            + "; raise candidates, lower chips.min_spacing_m or widen the coverage")
    unscored = chosen & ~has_score
    for r in sorted(set(region[unscored])):
        log.warning("region %s: only %d of its %d points have a usable scene among %d candidates; %d are filled "
                    "with candidates without one (ingest will skip them or retry their failures): raise "
                    "candidates or stac.max_cloud_cover, or widen the coverage", r, int((chosen & has_score &
                    (region == r)).sum()), counts[r], int((region == r).sum()), int((unscored & (region == r)).sum()))
    picked = np.flatnonzero(chosen)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    cont = np.array([CONTINENTS.index(r) for r in region[picked]], dtype=np.int64)
    return picked[np.lexsort((rank[picked], cont))]


class _Csr:
    """Neighbour lists in compressed rows: ``data[indptr[i]:indptr[i+1]]`` are ``i``'s neighbours."""

    def __init__(self, n: int, pairs: np.ndarray):
        both = np.concatenate([pairs, pairs[:, ::-1]]) if len(pairs) else np.empty((0, 2), dtype=np.int64)
        both = both[np.argsort(both[:, 0], kind="stable")]
        self.indptr = np.searchsorted(both[:, 0], np.arange(n + 1))
        self.data = both[:, 1]

    def __getitem__(self, s):
        return self.data[s]


def _neighbours(candidates: pd.DataFrame, min_spacing_m: float) -> _Csr | None:
    """Pairs of candidates closer than ``min_spacing_m`` (None: no spacing asked)."""
    if not min_spacing_m > 0 or len(candidates) < 2:
        return None
    xyz = unit_vectors(candidates["lon"].to_numpy(np.float64), candidates["lat"].to_numpy(np.float64))
    # A hair under the spacing counts as a conflict, as in plan's sampling.
    pairs = cKDTree(xyz).query_pairs(_chord_for(min_spacing_m) * (1 + 1e-9), output_type="ndarray")
    return _Csr(len(candidates), pairs.astype(np.int64))


def chosen_points(candidates: pd.DataFrame, picked: np.ndarray, set_name: str) -> pd.DataFrame:
    """The points table of the chosen candidates (``select_diverse`` order): ids ``<set>-<i:06d>``
    and ``set`` as any set's, the candidate's other columns kept."""
    out = candidates.iloc[np.asarray(picked, dtype=np.int64)].reset_index(drop=True)
    out["point_id"] = [f"{set_name}-{i:06d}" for i in range(len(out))]
    out["set"] = set_name
    return out


def points_from_candidates(table: pd.DataFrame, set_name: str) -> pd.DataFrame:
    """The points :func:`plan_diverse_set` chose, from its candidates table (a stored one reused)."""
    chosen = table[table["chosen"].astype(bool)].sort_values("chosen_point_id")
    return chosen[POOL_COLUMNS].assign(point_id=chosen["chosen_point_id"].astype(str).to_numpy(),
                                       set=set_name).reset_index(drop=True)


class DiversePlan(NamedTuple):
    """What :func:`plan_diverse_set` gives: the chosen points (unlabelled: :func:`pw_ray.plan.label_points`
    adds biome and land cover), the pool with its signatures, a ``chosen`` flag and the chosen
    point's ``chosen_point_id`` (the ``candidates/<set>.parquet`` table), and the pool's candidates
    the exclusion replaced per continent."""

    points: pd.DataFrame
    candidates: pd.DataFrame
    replaced: dict[str, int]


def plan_diverse_set(pset: PretrainSet, signatures, coverage: dict | None = None, min_spacing_m: float = 0.0, *,
                     held_out: pd.DataFrame | None = None, exclusion_m: float = 0.0) -> DiversePlan:
    """The three steps for one set: pool (kept ``exclusion_m`` from ``held_out`` before anything
    else), ``signatures(pool)`` (a frame with ``point_id`` and ``score``, e.g.
    :func:`pw_ray.ingest.signatures.signature_table` bound to a source), selection."""
    if pset.strategy != STRATEGY:
        raise ValueError(f"set {pset.name!r} has strategy {pset.strategy!r}; plan_diverse_set builds "
                         f"strategy {STRATEGY!r} sets")
    sampled = candidate_pool(pset, coverage, min_spacing_m, held_out=held_out, exclusion_m=exclusion_m)
    pool = sampled.points
    sig = signatures(pool)
    table = pool.merge(sig, on="point_id", how="left", validate="one_to_one")
    picked = select_diverse(table, table["score"].to_numpy(np.float64),
                            continent_counts(pset.weights(), pset.size), min_spacing_m)
    points = chosen_points(pool, picked, pset.name)
    table["chosen"] = False
    table.loc[table.index[picked], "chosen"] = True
    table["chosen_point_id"] = None
    table.loc[table.index[picked], "chosen_point_id"] = points["point_id"].to_numpy()
    log.info("set %s: %d of %d candidates chosen; mean signature entropy %s nats (of all candidates with one: %s)",
             pset.name, len(points), len(pool), _mean(table.loc[table["chosen"], "score"]), _mean(table["score"]))
    return DiversePlan(points, table, sampled.replaced)


def _mean(scores: pd.Series) -> str:
    x = scores.to_numpy(np.float64)
    x = x[np.isfinite(x)]
    return f"{x.mean():.3f}" if x.size else "n/a"


__all__ = ["POOL_COLUMNS", "STRATEGY", "DiversePlan", "candidate_pool", "chosen_points", "plan_diverse_set",
           "points_from_candidates", "select_diverse"]
