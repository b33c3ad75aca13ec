"""Catalog adapters: which asset holds each canonical band, how to sign it, and the offset rule.

Every catalog names Sentinel-2 assets its own way; the adapters map them onto the canonical
names of :mod:`pw_ray.bands` and state one harmonisation rule each, so that every chip is
reflectance ×10⁴ on the pre-04.00 scale (ESA added ``BOA_ADD_OFFSET`` = −1000, i.e. DNs are
+1000 higher, from processing baseline 04.00 on, January 2022):

* **Planetary Computer** (``sentinel-2-l2a``) serves ESA's DNs unchanged: for items with
  ``s2:processing_baseline`` ≥ 04.00 add −1000.
* **Earth Search v1** (``sentinel-2-l2a``): Element 84 subtracted the offset in the COGs of items
  flagged ``earthsearch:boa_offset_applied: true`` (add 0). Items flagged ``false`` and items
  without the flag follow the baseline rule (≥ 04.00: add −1000; older: 0). The collection's
  ``raster:bands`` offset of −0.1 is known to be wrong there (Element84/earth-search#71) and is
  ignored, flag or not.
* **Earth Search Collection 1** (``sentinel-2-c1-l2a``) and any other catalog whose assets declare
  ``raster:bands`` ``scale``/``offset``: add ``offset / scale`` (−0.1 / 0.0001 = −1000).
* **generic** without ``raster:bands``: the baseline rule of Planetary Computer.

DN 0 stays 0 (no data); harmonised values are clipped to [1, 65535] elsewhere.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from pw_ray import bands as B

log = logging.getLogger(__name__)

_EARTH_SEARCH_KEYS = {
    "B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1",
    "B06": "rededge2", "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09",
    "B11": "swir16", "B12": "swir22", "SCL": "scl",
}


class MissingBandError(KeyError):
    """An item lacks an asset for a requested band."""

    def __str__(self):
        return self.args[0]


def _baseline(item: dict) -> float | None:
    props = item.get("properties", {})
    raw = props.get("s2:processing_baseline") or props.get("sentinel:processing_baseline")
    try:
        return float(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


def _baseline_offset(item: dict) -> int:
    b = _baseline(item)
    return -1000 if b is not None and b >= 4.0 else 0


def _raster_offset(asset: dict) -> int | None:
    rb = asset.get("raster:bands") or []
    if not rb or "offset" not in rb[0] or not rb[0].get("scale"):
        return None
    return int(round(float(rb[0]["offset"]) / float(rb[0]["scale"])))


@dataclass(frozen=True)
class CatalogAdapter:
    """Maps one catalog's items onto canonical bands."""

    name: str

    def asset_key(self, item: dict, band: str) -> str:
        band = B.canonical(band)
        assets = item.get("assets", {})
        for key in self._candidate_keys(band):
            if key in assets:
                return key
        # Any catalog: an asset whose eo:bands names the band.
        for key, asset in assets.items():
            if key.endswith("-jp2"):
                continue
            for eb in asset.get("eo:bands", []) or asset.get("bands", []) or []:
                name = eb.get("name")
                if name and len(asset.get("eo:bands", asset.get("bands", []))) == 1:
                    try:
                        if B.canonical(name) == band:
                            return key
                    except B.UnknownBandError:
                        continue
        raise MissingBandError(
            f"item {item.get('id')!r} has no asset for band {band} "
            f"(catalog {self.name}; assets: {sorted(assets)})"
        )

    def _candidate_keys(self, band: str) -> tuple[str, ...]:
        return (band, band.lower())

    def href(self, item: dict, band: str) -> str:
        return item["assets"][self.asset_key(item, band)]["href"]

    def offset(self, item: dict, band: str) -> int:
        """DN offset that harmonises this band of this item to the pre-04.00 scale."""
        if band == B.SCL:
            return 0
        return _baseline_offset(item)

    def sign(self, href: str) -> str:
        return href


_QUERY = re.compile(r"((?:https?|s3|gs|abfs|/vsicurl/https?):?/?/[^\s?'\"]*)\?[^\s'\"]*")


def redact(text: str) -> str:
    """``text`` with the query string of every URL in it replaced by ``?<redacted>``.

    Signed hrefs carry their credential (a SAS token: ``st=…&se=…&sig=…``) in the query, and
    GDAL's error messages quote the URL they failed on: every error text that can reach a log
    line or an output table goes through here.
    """
    return _QUERY.sub(r"\1?<redacted>", str(text))


@dataclass(frozen=True)
class PlanetaryComputer(CatalogAdapter):
    name: str = "planetary-computer"
    #: Hosts whose hrefs are signed (Azure Blob Storage, where Planetary Computer keeps its data).
    sign_hosts: tuple[str, ...] = ("blob.core.windows.net",)
    #: The signing function; ``None``: ``planetary_computer.sign_url`` (looked up at each call).
    signer: object = None

    def sign(self, href: str) -> str:
        # Tokens expire (≈1 h): sign just before each read, never store signed URLs.
        if not any(h in href for h in self.sign_hosts):
            return href
        if self.signer is not None:
            return self.signer(href)
        import planetary_computer

        return planetary_computer.sign_url(href)


@dataclass(frozen=True)
class EarthSearch(CatalogAdapter):
    name: str = "earth-search"

    def _candidate_keys(self, band: str) -> tuple[str, ...]:
        return (_EARTH_SEARCH_KEYS[band], band)

    def offset(self, item: dict, band: str) -> int:
        if band == B.SCL:
            return 0
        props = item.get("properties", {})
        collection = item.get("collection")
        if collection != "sentinel-2-c1-l2a" and "earthsearch:boa_offset_applied" in props:
            return 0 if props["earthsearch:boa_offset_applied"] else _baseline_offset(item)
        if collection == "sentinel-2-l2a":
            # Unflagged v1 items: the baseline rule. Their raster:bands offset (−0.1 on every item,
            # whatever its baseline) is wrong for this collection (Element84/earth-search#71).
            return _baseline_offset(item)
        declared = _raster_offset(item["assets"][self.asset_key(item, band)])
        return declared if declared is not None else _baseline_offset(item)


@dataclass(frozen=True)
class Generic(CatalogAdapter):
    name: str = "generic"

    def offset(self, item: dict, band: str) -> int:
        if band == B.SCL:
            return 0
        declared = _raster_offset(item["assets"][self.asset_key(item, band)])
        return declared if declared is not None else _baseline_offset(item)


ADAPTERS: dict[str, CatalogAdapter] = {
    "planetary-computer": PlanetaryComputer(),
    "earth-search": EarthSearch(),
    "generic": Generic(),
}


def adapter_for(name: str) -> CatalogAdapter:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise ValueError(f"unknown catalog {name!r}; allowed: {', '.join(ADAPTERS)}") from None


def baseline_of(item: dict) -> str:
    props = item.get("properties", {})
    return str(props.get("s2:processing_baseline") or props.get("sentinel:processing_baseline") or "")
