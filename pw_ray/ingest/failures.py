"""Failed chips: transient or permanent, grouped by reason, and the stage's failure budget.

A **transient** failure (HTTP 429/5xx, a timeout, a dropped connection, an I/O error) is
retried on the next run; a **permanent** one (a band the item lacks, a corrupt or unreadable
asset, a chip outside its scene) keeps its reason and is retried only with ``--retry-failed``.
An error pw-ray cannot place is treated as transient: retrying costs one more read of those
chips, while calling it permanent could lose them for good.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

TRANSIENT = "transient"
PERMANENT = "permanent"

#: Exception types whose failure will not change on a retry.
_PERMANENT_TYPES = ("MissingBandError", "UnknownBandError", "KeyError", "ValueError", "NotImplementedError")
#: Phrases of GDAL/HTTP errors that a retry can cure.
_TRANSIENT_TEXT = re.compile(
    r"\b(429|500|502|503|504)\b|timed? ?out|timeout|temporar|connection|reset by peer|broken pipe|"
    r"too many requests|service unavailable|bad gateway|curl error|ssl|eof occurred|remote end closed",
    re.IGNORECASE)
#: Phrases of errors a retry cannot cure (a corrupt or missing file). Not GDAL's "does not exist
#: in the file system": over /vsicurl/ that is what a dropped connection looks like.
_PERMANENT_TEXT = re.compile(
    r"not recognized as (?:being in )?a supported file format|not a valid tiff|tiffread|ireadblock failed|"
    r"no such file or directory|\b404\b|\b403\b|corrupt|truncated|illegal|missing asset|lacks",
    re.IGNORECASE)


def failure_kind(err: BaseException | str) -> str:
    """:data:`TRANSIENT` or :data:`PERMANENT` for an exception (or a ``"Type: message"`` reason)."""
    if isinstance(err, BaseException):
        name, text = type(err).__name__, _chain_text(err)
        if isinstance(err, (TimeoutError, ConnectionError)):
            return TRANSIENT
    else:
        name, _, text = str(err).partition(":")
    if _TRANSIENT_TEXT.search(text):
        return TRANSIENT
    if name in _PERMANENT_TYPES or _PERMANENT_TEXT.search(text):
        return PERMANENT
    return TRANSIENT


def _chain_text(err: BaseException) -> str:
    """The messages of an exception and its causes (rasterio's "Read failed. See previous
    exception" names the GDAL error only in its cause)."""
    parts, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        parts.append(str(err))
        err = err.__cause__ or err.__context__
    return " | ".join(parts)


def retryable(kind: str, retry_failed: bool = False) -> bool:
    """Whether a chip that failed with ``kind`` is tried again on this run."""
    return kind == TRANSIENT or (retry_failed and kind == PERMANENT)


_URL = re.compile(r"(?:[a-z][a-z0-9+.-]*://|/vsi\w+/)\S+|(?:/[\w.-]+){2,}", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def reason_key(reason: str, width: int = 90) -> str:
    """A reason with its URLs, paths and numbers blanked, so that the same failure on many
    scenes counts as one reason (``"RasterioIOError: HTTP response code: # on <url>"``)."""
    text = _URL.sub("<url>", str(reason))
    # Numbers go, HTTP status codes (4xx/5xx) stay: they are the point of many reasons.
    text = _NUMBER.sub(lambda m: m.group(0) if re.fullmatch(r"[45]\d\d", m.group(0)) else "#", text)
    return text[:width]


def top_reasons(reasons: Iterable[str], n: int = 3) -> list[tuple[str, int]]:
    """The ``n`` most common :func:`reason_key` groups with their counts."""
    return Counter(reason_key(r) for r in reasons if r).most_common(n)


class FailureBudgetExceeded(RuntimeError):
    """A stage failed more chips than ``chips.max_failed_fraction`` allows, or produced none."""


def budget_error(name: str, total: int, ok: int, failed: int, skipped: int, reasons: Iterable[str],
                 max_failed_fraction: float, what: str = "chips") -> str | None:
    """Why a set's ingest must not count as done (None: within budget).

    Over budget: more than ``max_failed_fraction`` of ``total`` failed, or nothing at all was
    produced. The message has the counts and the three most common reasons.
    """
    reasons = list(reasons)
    if total and ok and failed <= max_failed_fraction * total:
        return None
    head = (f"{name}: no {what} produced ({ok}/{total} ok, {skipped} skipped, {failed} failed)" if not ok
            else f"{name}: {failed}/{total} {what} failed ({failed / total:.1%}), more than "
                 f"chips.max_failed_fraction = {max_failed_fraction:g}")
    if not total:
        head = f"{name}: no {what} to produce (0 points planned)"
    top = top_reasons(reasons)
    if top:
        head += "; most common reasons: " + "; ".join(f"{k} (×{c})" for k, c in top)
    return head
