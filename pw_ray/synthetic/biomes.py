"""The biome layer: RESOLVE-like biome names and the scene halves that carry them (``biomes.geojson``)."""

from __future__ import annotations

from pw_ray.synthetic.scenes import Scene, polygon

#: Short biome codes (as in the scene centres of ``scenes.py``) → RESOLVE-like biome names.
BIOME_NAMES: dict[str, str] = {
    "tmb": "Tropical & Subtropical Moist Broadleaf Forests",
    "tdb": "Tropical & Subtropical Dry Broadleaf Forests",
    "tbm": "Temperate Broadleaf & Mixed Forests",
    "tcf": "Temperate Conifer Forests",
    "bor": "Boreal Forests/Taiga",
    "tgs": "Tropical & Subtropical Grasslands, Savannas & Shrublands",
    "tmg": "Temperate Grasslands, Savannas & Shrublands",
    "flg": "Flooded Grasslands & Savannas",
    "mon": "Montane Grasslands & Shrublands",
    "med": "Mediterranean Forests, Woodlands & Scrub",
    "des": "Deserts & Xeric Shrublands",
}
#: RESOLVE-like biome names used in ``biomes.geojson``.
BIOMES: tuple[str, ...] = tuple(BIOME_NAMES.values())


def biome_features(scene: Scene, corners: dict) -> list[dict]:
    """The scene's west and east halves, each with its biome (together they tile the footprint)."""
    halves = (("bl", "bm", "tm", "tl"), ("bm", "br", "tr", "tm"))
    return [{"type": "Feature", "geometry": polygon(corners, names),
             "properties": {"biome": BIOME_NAMES[code], "region": scene.region, "scene": scene.item_id}}
            for names, code in zip(halves, scene.biomes)]
