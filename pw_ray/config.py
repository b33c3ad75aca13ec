"""The experiment config: one YAML file → one validated, typed object.

Everything is checked before any work starts; a bad value fails with a message that
names the field (``pretrain_sets[2].region``) and what would be allowed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pw_ray import bands as B

log = logging.getLogger(__name__)

#: The six continents (Antarctica excluded) and the equal mix of them.
CONTINENTS: tuple[str, ...] = ("af", "as", "eu", "na", "oc", "sa")
GLOBAL = "global"
REGIONS: tuple[str, ...] = CONTINENTS + (GLOBAL,)
REGION_NAMES = {
    "af": "Africa", "as": "Asia", "eu": "Europe", "na": "North America",
    "oc": "Oceania", "sa": "South America", "global": "Global",
}


class ConfigError(ValueError):
    """A config that cannot run; the message names each bad field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_region(value: str) -> str:
    if value not in REGIONS:
        raise ValueError(f"unknown region {value!r}; allowed: {', '.join(REGIONS)}")
    return value


class PretrainSet(_Strict):
    """A named sample of points: one continent, ``global`` or a weighted mix."""

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    region: str | dict[str, float]
    size: int = Field(gt=0, description="number of chips")
    seed: int = 0
    strategy: Literal["random", "spectral-diverse"] = Field(
        "random", description="how the points are chosen: random (uniform on land, the paper's way) or "
                              "spectral-diverse (a pool of candidates × size points drawn the random way, a cheap "
                              "spectral signature per candidate from the COGs' overviews, and the size points of "
                              "highest spectral entropy kept, per continent; docs/plan-and-ingest.md)")
    candidates: int = Field(8, ge=2, le=1000, description="spectral-diverse: candidate points per chosen point")
    signature_px: int = Field(12, ge=2, le=256, description="spectral-diverse: side in pixels of a candidate's "
                                                            "signature read, e.g. 12 reads a 96 px chip at 80 m")

    @field_validator("region")
    @classmethod
    def _region(cls, v):
        if isinstance(v, str):
            return _check_region(v)
        if not v:
            raise ValueError("a region mix needs at least one continent")
        for k, w in v.items():
            if k not in CONTINENTS:
                raise ValueError(f"unknown region {k!r} in mix; allowed: {', '.join(CONTINENTS)}")
            if w < 0:
                raise ValueError(f"weight of {k!r} must be ≥ 0, got {w}")
        if sum(v.values()) <= 0:
            raise ValueError("region mix weights must sum to > 0")
        return v

    @model_validator(mode="after")
    def _diverse_only(self):
        if self.strategy == "random":
            # a value equal to its default is harmless (a dumped config carries it); only a changed one is a
            # mistake worth stopping for
            given = sorted(f for f in {"candidates", "signature_px"} & self.model_fields_set
                           if getattr(self, f) != type(self).model_fields[f].default)
            if given:
                raise ValueError(f"{', '.join(given)} apply to strategy: spectral-diverse only; set it or remove "
                                 f"{'them' if len(given) > 1 else 'it'}")
        return self

    def weights(self) -> dict[str, float]:
        """Normalised continent weights of this set."""
        if isinstance(self.region, dict):
            total = sum(self.region.values())
            return {k: w / total for k, w in self.region.items() if w > 0}
        if self.region == GLOBAL:
            return {c: 1 / len(CONTINENTS) for c in CONTINENTS}
        return {self.region: 1.0}


class SyntheticArchive(_Strict):
    """The embedded Sentinel-2 L2A-like archive (see ``pw_ray.synthetic``)."""

    seed: int = 0
    scenes_per_region: int = Field(3, gt=0)
    scene_px: int = Field(480, ge=96, description="scene side at 10 m, pixels (multiple of 6)")
    cloudy_fraction: float = Field(0.3, ge=0, le=1, description="share of scenes with clouds")
    block_px: int = Field(256, ge=128, le=2048, multiple_of=16,
                          description="COG tile side in pixels for grids at least that large (smaller "
                                      "grids: 256 or 128); real Sentinel-2 L2A COGs use 1024")

    @field_validator("scene_px")
    @classmethod
    def _px(cls, v):
        if v % 6:
            raise ValueError(f"scene_px must be a multiple of 6 (10/20/60 m grids align), got {v}")
        return v


class LandcoverCollection(_Strict):
    """Land cover from the items of a STAC collection (e.g. ESA WorldCover on Planetary Computer)."""

    collection: str = Field(min_length=1, description="collection id, e.g. esa-worldcover")
    asset: str = Field("map", min_length=1, description="asset key of the class raster in each item")
    url: str | None = Field(None, description="STAC API URL or static catalog / ItemCollection / .ndjson path; "
                                              "unset: stac.url (for kind synthetic: the archive's items)")
    kind: Literal["api", "static"] | None = Field(
        None, description="how to search url; unset: stac.kind without url, else static for a .json/.geojson/"
                          ".ndjson path and api otherwise")
    datetime: str | None = Field(None, description="date range of the items, e.g. 2021-01-01/2021-12-31 for "
                                                   "WorldCover v200; unset: all, the newest item first where "
                                                   "tiles overlap")
    catalog: Literal["planetary-computer", "earth-search", "generic"] | None = Field(
        None, description="adapter that signs the hrefs before each read; unset: stac.catalog")


def _check_landcover(value):
    """``stac.landcover``: a raster path/URI (string) or a collection mapping; say which was meant."""
    if value is None or isinstance(value, LandcoverCollection):
        return value
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("empty: give a raster path/URI or {collection: <id>}")
        if "/" not in text and "." not in text:
            raise ValueError(f"{value!r} is neither a raster path nor a URI; for a STAC collection "
                             f"write landcover: {{collection: {text}}}")
        return text
    if isinstance(value, dict):
        try:
            return LandcoverCollection.model_validate(value)
        except ValidationError as err:
            probs = []
            for e in err.errors():
                name = ".".join(str(p) for p in e["loc"]) or "<mapping>"
                if e["type"] == "extra_forbidden":
                    probs.append(f"{name!r} is not a field (check the spelling)")
                elif e["type"] == "missing":
                    probs.append(f"{name!r} is required")
                else:
                    probs.append(f"{name!r}: {e['msg'].removeprefix('Value error, ')}")
            allowed = ", ".join(LandcoverCollection.model_fields)
            raise ValueError("; ".join(probs) + f" (a land-cover collection takes: {allowed})") from None
    raise ValueError(f"must be a raster path/URI or a mapping like {{collection: esa-worldcover, "
                     f"asset: map}}, got {type(value).__name__}")


class StacSource(_Strict):
    """Where scenes come from: the synthetic archive, a STAC API, or a static catalog."""

    kind: Literal["synthetic", "api", "static"] = "synthetic"
    url: str | None = Field(None, description="STAC API URL (api) or catalog/ItemCollection path (static)")
    catalog: Literal["planetary-computer", "earth-search", "generic"] = "planetary-computer"
    collection: str = "sentinel-2-l2a"
    datetime: str = "2023-01-01/2023-12-31"
    max_cloud_cover: float = Field(20.0, ge=0, le=100, description="eo:cloud_cover limit, percent")
    max_items: int = Field(5, gt=0, description="scenes considered per point")
    seasons: int = Field(1, ge=1, description="chips per point: the date range is split into this many equal "
                                             "windows and the best scene of each gives one chip, "
                                             "chip_id '<point_id>-s<k>' (1: one chip, chip_id = point_id)")
    synthetic: SyntheticArchive = SyntheticArchive()
    # Point labels for real catalogs (the synthetic archive ships its own; these override it).
    biome_path: str | None = Field(None, description="GeoJSON FeatureCollection of biome polygons with a 'biome' "
                                                     "property (path or URI), e.g. RESOLVE Ecoregions 2017")
    landcover: str | LandcoverCollection | None = Field(
        None, description="land cover in ESA WorldCover codes, for each point's label and each chip's class "
                          "fractions: a raster (local path or URI, any CRS) or a STAC collection "
                          "({collection: esa-worldcover, asset: map, url: …}); unset: the synthetic archive's "
                          "'synthetic-landcover' collection for kind synthetic, none otherwise")
    # Search per cell (docs/plan-and-ingest.md "Search per tile")
    search_cell_deg: float = Field(
        1.0, gt=0, le=10, description="side of the lon/lat cells the points are searched by, degrees: one paged "
                                      "search per cell and season (1°: about a Sentinel-2 tile); changes the "
                                      "number of requests, never which scenes a point gets")
    page_size: int = Field(100, ge=1, le=10_000, description="items per page of a cell search (the API's 'limit'); "
                                                             "a search stops reading pages once no later item can "
                                                             "be among any point's max_items best")
    # HTTP behaviour
    retries: int = Field(5, ge=0, description="retries of a failed request (5xx, timeout, dropped connection), "
                                              "with exponential backoff and jitter; 429s do not use them up")
    backoff_s: float = Field(0.5, ge=0, description="first backoff between retries, seconds (doubles each time)")
    timeout_s: float = Field(30.0, gt=0, description="HTTP connect and read timeout of a STAC request, seconds")
    max_concurrent_requests: int | None = Field(
        8, gt=0, description="STAC API requests in flight at once across the whole job (all tasks and sets "
                             "together; one budget actor per job); unset: no limit")
    max_requests_per_s: float | None = Field(
        10.0, gt=0, description="STAC API requests started per second across the whole job; a 429 with "
                                "Retry-After pauses every task for that long; unset: no limit")

    _landcover = field_validator("landcover", mode="before")(_check_landcover)

    @model_validator(mode="after")
    def _url(self):
        if self.kind != "synthetic" and not self.url:
            raise ValueError(f"stac.url is required when stac.kind is {self.kind!r}")
        return self


class ChipSpec(_Strict):
    bands: list[str] = Field(default_factory=lambda: list(B.SATMAE_BANDS))
    size_px: int = Field(96, gt=0)
    resolution_m: float = Field(10.0, gt=0)
    max_cloud_fraction: float = Field(0.2, ge=0, le=1)
    max_nodata_fraction: float = Field(0.05, ge=0, le=1)
    resampling: Literal["bilinear", "nearest", "cubic", "average"] = "bilinear"
    chunk_size: int = Field(256, gt=0, description="chips per Parquet file / tar")
    webdataset: bool = True
    min_spacing_m: float = Field(0.0, ge=0, description="minimum great-circle distance between the planned points "
                                                        "of a set (no duplicate locations); e.g. size_px × "
                                                        "resolution_m × √2 keeps chips from overlapping")
    max_failed_fraction: float = Field(
        0.05, ge=0, le=1, description="largest share of a set's chips that may fail (errors, not cloud or no-data "
                                      "skips) before the ingest exits non-zero and is not marked done")
    ingest_parallelism: int | None = Field(
        None, gt=0, description="ingest tasks in flight at once; unset: one per work unit (chunk, index part) up "
                                "to the CPUs the cluster can grow to (chips.ingest_max_cpus, else the cluster "
                                "YAML: $PW_RAY_CLUSTER_YAML or ~/ray_bootstrap_config.yaml), never below the "
                                "CPUs it has now, so an autoscaler sees the demand it must grow to")
    ingest_max_cpus: int | None = Field(
        None, gt=0, description="CPUs the cluster can grow to for ingest (caps the default task pool); unset: "
                                "read from the cluster YAML ($PW_RAY_CLUSTER_YAML, or the "
                                "~/ray_bootstrap_config.yaml `ray up` leaves on the head), else one task per "
                                "work unit")

    @field_validator("bands")
    @classmethod
    def _bands(cls, v):
        out = [B.canonical(b) for b in v]
        if B.SCL in out:
            raise ValueError("SCL is read for masks, not as a model band; remove it from chips.bands")
        # B10 (cirrus) is a valid Sentinel-2 name but L2A products do not carry it: every chip
        # would fail with MissingBandError. Only what ingest can read passes.
        absent = [b for b in out if b not in B.SPECTRAL_BANDS]
        if absent:
            raise ValueError(f"{absent} not in Sentinel-2 L2A products (B10 is dropped at L2A); "
                             f"allowed: {', '.join(B.SPECTRAL_BANDS)}")
        if len(set(out)) != len(out):
            raise ValueError(f"duplicate bands in {v}")
        return out


class ModelSpec(_Strict):
    preset: Literal["tiny", "small", "base", "large"] = "tiny"
    patch_size: int = Field(8, gt=0)
    mask_ratio: float = Field(0.75, gt=0, lt=1)
    groups: list[list[str]] = Field(default_factory=lambda: [list(g) for g in B.SATMAE_GROUPS])
    norm_pix_loss: bool = False
    normalization: Literal["fmow", "set"] = Field(
        "fmow", description="per-band clip/scale statistics: SatMAE's fMoW-Sentinel ones, or recomputed "
                            "from the pretraining set's shards (saved in the export's config.json)")
    loss_pairing: Literal["official", "per_group"] = Field(
        "official", description="official: SatMAE's loss, which compares the group-ordered predictions with "
                                "the channel-ordered target (what the paper trained; with the default groups "
                                "some predictions are scored against another band); per_group: each group "
                                "scored against its own bands (the corrected variant). docs/pretrain.md")
    spatial_mask: bool = Field(
        False, description="mask the same spatial positions in every band group (SatMAE's --spatial_mask); "
                           "false: independent masking over all group tokens, SatMAE's default and the paper's")
    input_quantization: Literal["uint8", "none"] = Field(
        "uint8", description="uint8: after clip/scale, keep SatMAE's 256 levels (floor(255·x)/255, as its "
                             "SentinelNormalize + ToTensor); none: the unquantised float. Applies to "
                             "pretraining and to every embedding of the exported encoder")

    @field_validator("groups")
    @classmethod
    def _groups(cls, v):
        return [[B.canonical(b) for b in g] for g in v]


class TrainSpec(_Strict):
    epochs: int = Field(1, gt=0)
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps")
    batch_size: int = Field(32, gt=0, description="per worker")
    accum_steps: int = Field(1, gt=0)
    blr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(0.0, ge=0)
    grad_clip: float | None = None
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0)
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict, description="extra Ray resources per worker, e.g. {accelerator_type:H100: 0.001}")
    compile: bool = Field(False, description="torch.compile the model in each worker")
    precision: Literal["bf16", "fp16", "fp32"] = Field(
        "bf16", description="autocast on GPU workers: bf16; fp16 with a gradient scaler (SatMAE's "
                            "torch.cuda.amp.autocast + NativeScaler); fp32. CPU workers always train in fp32")
    shuffle_buffer: int = Field(256, ge=0, description="chips per worker in a local shuffle window: consecutive "
                                                       "row groups of at least this many chips leave in a seeded "
                                                       "random order (0: reading order; files are shuffled anyway)")
    loader_threads: int = Field(2, gt=0, description="threads per worker reading and decompressing shard row "
                                                     "groups ahead of the step")
    prefetch_batches: int = Field(2, gt=0, description="batches per worker ready ahead of the step")
    checkpoint_every_min: float | None = Field(
        30.0, gt=0, description="minutes of training time between checkpoints, on rank 0's clock (the step it "
                                "falls on is agreed by every worker at the metric reports); a preempted worker "
                                "loses at most this much training. Unset (null) when only checkpoint_every is "
                                "wanted; setting checkpoint_every alone unsets it")
    checkpoint_every: int | None = Field(
        None, gt=0, description="optimizer steps between checkpoints (with checkpoint_every_min too: whichever "
                                "comes first)")
    keep_checkpoints: int = Field(2, gt=0, description="checkpoints of lowest loss kept, besides the latest one "
                                                       "(always kept: a run resumes from it)")
    log_every: int = Field(10, gt=0)
    max_failures: int = Field(3, ge=-1)

    @model_validator(mode="before")
    @classmethod
    def _steps_alone(cls, data):
        # Configs written before checkpoints by time say `checkpoint_every: <steps>` only: they
        # keep meaning steps, not steps plus the 30-minute default.
        if isinstance(data, dict) and data.get("checkpoint_every") is not None and "checkpoint_every_min" not in data:
            data = {**data, "checkpoint_every_min": None}
        return data

    @model_validator(mode="after")
    def _some_checkpoints(self):
        if self.checkpoint_every_min is None and self.checkpoint_every is None:
            raise ValueError("no checkpoint interval: set train.checkpoint_every_min (minutes of training) or "
                             "train.checkpoint_every (optimizer steps); without either a lost worker loses the run")
        if self.checkpoint_every_min is not None and self.checkpoint_every_min * 60 < 1:
            raise ValueError(f"train.checkpoint_every_min {self.checkpoint_every_min} is under a second: give "
                             "minutes (e.g. 30), or train.checkpoint_every for an interval in steps")
        return self


class TaskSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    kind: Literal["synthetic-landcover", "synthetic-population", "points", "fmow", "geobench"]
    path: str | None = None
    size: int = Field(400, gt=0, description="labelled chips (synthetic and points)")
    max_chips: int | None = Field(None, gt=0, description="fmow, geobench: seeded sample of at most this many "
                                                          "images, stratified by split and label; all when unset")
    seed: int = 0
    split: Literal["spatial", "random", "dataset"] = Field(
        None, validate_default=False,
        description="how chips are assigned to train/val/test, decided at plan time per point: 'spatial' "
                    "(blocks of plan.block_m assigned whole, so neighbouring chips stay in one split; the "
                    "default for synthetic and points tasks), 'random' (seeded per region, stratified by label "
                    "where labels are known at plan time), 'dataset' (fmow, geobench: the dataset's own split, "
                    "their default and only choice). A list of three fractions (the old form) means "
                    "'random' with those split_fractions")
    split_fractions: tuple[float, float, float] = Field(
        (0.6, 0.2, 0.2), description="train, val, test shares (normalised); spatial: the probability of a "
                                     "block being each; fmow without test_gt.csv: val/test ratio of its val set")
    task_type: Literal["classification", "regression"] | None = Field(
        None, description="what the labels are; unset: regression for synthetic-population, classification "
                          "otherwise (a points file with numeric targets needs task_type: regression)")

    @model_validator(mode="before")
    @classmethod
    def _split_forms(cls, data):
        """``split: [0.6, 0.2, 0.2]`` (before 2026-12) → random with those fractions; unset split and
        task_type → by kind."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        imported = data.get("kind") in ("fmow", "geobench")
        split = data.get("split")
        if isinstance(split, (list, tuple)):
            if "split_fractions" in data:
                raise ValueError("split is a list of fractions and split_fractions is set too: give the "
                                 "fractions once, as split_fractions, and split: spatial|random")
            data["split_fractions"] = tuple(split)
            data["split"] = "dataset" if imported else "random"
        elif split is None:
            data["split"] = "dataset" if imported else "spatial"
        if data.get("task_type") is None:
            data["task_type"] = "regression" if data.get("kind") == "synthetic-population" else "classification"
        return data

    @model_validator(mode="after")
    def _path(self):
        if self.kind in ("points", "fmow", "geobench") and not self.path:
            raise ValueError(f"tasks kind {self.kind!r} needs a path (labelled points file or dataset folder)")
        imported = self.kind in ("fmow", "geobench")
        if imported and self.split != "dataset":
            raise ValueError(f"split: kind {self.kind!r} keeps the dataset's own split; remove split "
                             "(split_fractions still sets fMoW's val/test ratio)")
        if not imported and self.split == "dataset":
            raise ValueError(f"split: 'dataset' is for fmow and geobench; kind {self.kind!r} takes spatial or random")
        if any(f < 0 for f in self.split_fractions) or sum(self.split_fractions) <= 0:
            raise ValueError(f"split_fractions must be three shares ≥ 0 (train, val, test) with a positive sum, "
                             f"got {list(self.split_fractions)}")
        fixed = {"synthetic-population": "regression", "synthetic-landcover": "classification",
                 "fmow": "classification", "geobench": "classification"}.get(self.kind)
        if fixed and self.task_type != fixed:
            raise ValueError(f"tasks kind {self.kind!r} is a {fixed} task; task_type {self.task_type!r} does not apply")
        return self


class PlanSpec(_Strict):
    """Where pretraining points may not go, and the block grid of spatial splits."""

    exclusion_m: float | None = Field(
        None, ge=0, description="every pretraining point is planned at least this far (great circle, metres) "
                                "from every task point of the held-out splits (exclude_splits); candidates "
                                "closer are replaced so sets keep their size and region weights. Unset: the "
                                "chip diagonal plus two pixels (chips.size_px × chips.resolution_m × √2 + "
                                "2 × chips.resolution_m), so no pretraining chip overlaps a held-out chip; "
                                "0: off (the report says so on its first page)")
    exclude_splits: list[Literal["test", "val"]] = Field(
        default_factory=lambda: ["test"], description="task splits kept apart from pretraining: test, "
                                                      "optionally val")
    block_m: float | None = Field(
        None, gt=0, description="side of the blocks of spatial task splits, metres; unset: 10 chip sides "
                                "(10 × chips.size_px × chips.resolution_m). Blocks are shared by all tasks")
    split_seed: int = Field(0, ge=0, description="seed of the block → split draw of spatial splits "
                                                 "(shared by all tasks: with equal split_fractions, a test "
                                                 "block is a test block for every task)")

    @field_validator("exclude_splits")
    @classmethod
    def _splits(cls, v):
        if "test" not in v:
            raise ValueError(f"must include 'test' (the split a leak would inflate), got {v}")
        return sorted(set(v), key=("test", "val").index)


class EvalSpec(_Strict):
    methods: list[Literal["knn", "linear", "finetune"]] = Field(default_factory=lambda: ["knn", "linear"])
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description=(
        "evaluation seeds: fine-tuning's head init, data order and dropout; with train_fraction < 1 "
        "also the training subsample of every method. kNN and the linear probe on the whole "
        "training split do not depend on a seed and run at the first seed only"))
    task_regions: list[str] = Field(default_factory=lambda: list(REGIONS))
    knn_k: int = Field(10, gt=0)
    min_subset: int = Field(20, gt=0, description="smallest task-region subset evaluated")
    include_zero: bool = True
    finetune_epochs: int = Field(2, gt=0)
    pooling: Literal["mean_then_norm", "norm_then_mean"] = Field(
        "mean_then_norm", description="patch tokens → one vector: mean_then_norm is SatMAE's fine-tuning head "
                                      "(global_pool: mean of the last block's tokens, then a fresh LayerNorm "
                                      "fc_norm); norm_then_mean applies the encoder's pretrained final norm to "
                                      "each token, then averages")
    layer_decay: float | None = Field(
        None, gt=0, le=1, description="fine-tuning's layer-wise lr decay (MAE/SatMAE: 0.75): transformer "
                                      "block i of L trains at lr·decay^(L−i), the patch embedding at "
                                      "lr·decay^(L+1), the head at lr; unset: one lr for all")
    train_fraction: float = Field(
        1.0, gt=0, le=1, description="share of each subset's training split that kNN, the linear probe and "
                                     "fine-tuning learn from: a draw per evaluation seed, stratified by "
                                     "label for classification (few-shot probing). 1: the whole split, so "
                                     "kNN and the linear probe are deterministic and run once, at the "
                                     "first seed; only fine-tuning runs per seed")
    cache_embeddings: bool = Field(True, description="kNN/linear read embeddings cached per (checkpoint, task); "
                                                     "false recomputes them in every cell (benchmarks only)")
    cpus_per_trial: float = Field(1, gt=0)
    gpus_per_probe: float = Field(0, ge=0)
    gpus_per_finetune: float = Field(0, ge=0)
    max_concurrent: int = Field(2, gt=0)

    @field_validator("task_regions")
    @classmethod
    def _regions(cls, v):
        return [_check_region(r) for r in v]


class AnalysisSpec(_Strict):
    spectral_bins: int = Field(16, gt=1)
    spectral_clusters: int = Field(32, gt=1)
    codebook_chips: int = Field(256, gt=0, description="chips per pretraining set in the seeded sample the "
                                                       "shared spectral codebook is fitted on")
    codebook_pixels: int = Field(64, gt=0, description="pixels drawn from each sampled chip for the codebook")
    seed: int = Field(0, description="seed of the codebook's chip and pixel sample and of its k-means fit")
    bootstrap: int = Field(1000, ge=0)
    external_sets: str | None = Field(
        None, description="CSV (path or URI) of sets pw-ray did not build: name, diversity values in nats, "
                          "per-task scores; shown beside the measured sets (README: External sets)")


class EstimateSpec(_Strict):
    """Prices and rates for ``pw-ray estimate``; unset rates use measured or labelled defaults."""

    price_cpu_hour: float | None = Field(None, ge=0, description="price of one vCPU-hour on CPU-only nodes "
                                                                 "(ingest, analyze, CPU trials); unset: no cost")
    price_gpu_hour: float | None = Field(None, ge=0, description="price of one GPU-hour on GPU nodes, their CPUs "
                                                                 "and memory included; unset: no cost")
    price_storage_gb_month: float | None = Field(None, ge=0, description="object-store price per GB (10⁹ bytes) "
                                                                         "and month; unset: no storage cost")
    storage_months: float = Field(1.0, gt=0, description="months the outputs are kept, for the storage cost")
    gpu_peak_tflops: float | None = Field(None, gt=0, description="dense bf16/fp16 peak of one GPU of the cluster, "
                                                                  "TFLOP/s (its data sheet); GPU-hours need it "
                                                                  "unless a bench/gpu_step.py calibration is given")
    mfu: float | None = Field(None, gt=0, le=1, description="model FLOPs utilisation of training and "
                                                            "evaluation on GPU; unset: a calibration's, else the "
                                                            "documented or assumed default that estimate prints")
    ingest_chips_per_cpu_s: float | None = Field(None, gt=0, description="chips one CPU ingests per second; "
                                                                         "unset: a calibration's, else the "
                                                                         "documented bench/ingest.py figure")
    analyze_chips_per_cpu_s: float | None = Field(None, gt=0, description="chips one CPU measures per second "
                                                                          "in analyze; unset: a calibration's, "
                                                                          "else the documented bench figure")
    search_cell_km: float | None = Field(None, gt=0, description="side of the cells the per-tile scene search "
                                                                 "groups points by, km; unset: a Sentinel-2 tile")
    stac_page_size: int | None = Field(None, gt=0, description="items per page of a STAC search; unset: the "
                                                               "assumption estimate prints")


class ExperimentConfig(_Strict):
    name: str = "pretrain-where"
    root: str = Field(description="storage root URI: local path, s3://, gs://")
    pretrain_sets: list[PretrainSet]
    stac: StacSource = StacSource()
    chips: ChipSpec = ChipSpec()
    model: ModelSpec = ModelSpec()
    train: TrainSpec = TrainSpec()
    tasks: list[TaskSpec] = Field(default_factory=list)
    plan: PlanSpec = PlanSpec()
    evaluation: EvalSpec = EvalSpec()
    analysis: AnalysisSpec = AnalysisSpec()
    estimate: EstimateSpec = Field(EstimateSpec(), description="prices and rates for `pw-ray estimate` only; "
                                                              "no stage reads them")

    @model_validator(mode="after")
    def _cross(self):
        names = [s.name for s in self.pretrain_sets]
        if len(set(names)) != len(names):
            raise ValueError(f"pretrain_sets names must be unique, got {names}")
        if "zero" in names:
            raise ValueError("'zero' is reserved for the random-encoder baseline")
        grouped = [b for g in self.model.groups for b in g]
        missing = [b for b in grouped if b not in self.chips.bands]
        if missing:
            raise ValueError(f"model.groups use bands not in chips.bands: {missing}")
        if self.model.loss_pairing == "official" and sorted(grouped) != sorted(self.chips.bands):
            left_out = [b for b in self.chips.bands if b not in grouped]
            repeated = sorted({b for b in grouped if grouped.count(b) > 1})
            raise ValueError(f"model.loss_pairing 'official' needs model.groups to hold every band of chips.bands "
                             f"exactly once (SatMAE scores its predictions against every channel); "
                             + "; ".join(f"{what}: {bands}" for what, bands in
                                         (("left out", left_out), ("repeated", repeated)) if bands)
                             + "; set model.loss_pairing: per_group, or group every band once")
        if self.chips.size_px % self.model.patch_size:
            raise ValueError(
                f"chips.size_px ({self.chips.size_px}) must be a multiple of model.patch_size ({self.model.patch_size})"
            )
        tnames = [t.name for t in self.tasks]
        if len(set(tnames)) != len(tnames):
            raise ValueError(f"task names must be unique, got {tnames}")
        return self

    @property
    def chip_overlap_m(self) -> float:
        """Chip diagonal plus two pixels, metres: chips whose centres are farther apart cannot
        overlap, whatever their grids' orientation and pixel snapping."""
        return self.chips.size_px * self.chips.resolution_m * 2 ** 0.5 + 2 * self.chips.resolution_m

    @property
    def exclusion_m(self) -> float:
        """Metres kept between pretraining points and held-out task points (0: off); see ``PlanSpec``."""
        if self.plan.exclusion_m is not None:
            return float(self.plan.exclusion_m)
        return self.chip_overlap_m

    @property
    def block_m(self) -> float:
        """Side of the spatial-split blocks in metres; see ``PlanSpec.block_m``."""
        if self.plan.block_m is not None:
            return float(self.plan.block_m)
        return 10.0 * self.chips.size_px * self.chips.resolution_m

    def pretrain_set(self, name: str) -> PretrainSet:
        for s in self.pretrain_sets:
            if s.name == name:
                return s
        raise KeyError(f"no pretraining set {name!r}; known: {[s.name for s in self.pretrain_sets]}")


def scoring_warnings(cfg: ExperimentConfig) -> list[str]:
    """What the config alone says about cells that cannot be scored (empty when nothing is known).

    A static check: with no tasks, or no methods or task regions, the evaluation grid has
    no cells; a synthetic task planned with fewer points than ``evaluation.min_subset`` cannot
    fill even its global subset. How many chips each task-region subset really holds is known
    only after ingest (points are skipped for clouds and no-data): ``evaluate`` reports the
    cells it skips and why.
    """
    ev = cfg.evaluation
    nothing = ("so no cell can be scored: analyze and report will give the diversity measures only, "
               "without downstream results or correlations")
    empty = [f for f in ("methods", "task_regions") if not getattr(ev, f)]
    if not cfg.tasks:
        return [f"no tasks: the evaluation grid has no cells, {nothing} (add tasks: to compare the sets "
                "downstream)"]
    if empty:
        return [f"evaluation.{', '.join(empty)} empty: the evaluation grid has no cells, {nothing}"]
    small = [t for t in cfg.tasks
             if t.kind in ("synthetic-landcover", "synthetic-population") and t.size < ev.min_subset]
    out = [f"tasks {t.name}: size {t.size} is below evaluation.min_subset={ev.min_subset}, so none of its "
           "task-region subsets can be scored" for t in small]
    if len(small) == len(cfg.tasks):
        out.append(f"every task is smaller than evaluation.min_subset, {nothing}")
    return out


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ""
        for part in e["loc"]:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        lines.append(f"  {loc or '<config>'}: {msg}")
    return "invalid config:\n" + "\n".join(lines)


def parse_config(data: dict[str, Any], overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Validate a config mapping; ``overrides`` (e.g. ``{"root": …}``) replace top-level keys."""
    data = dict(data or {})
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def load_config(uri: str | Path, overrides: dict[str, Any] | None = None,
                check_root: bool = True) -> ExperimentConfig:
    """Load YAML from a path or URI, validate it and (by default) check the root is writable."""
    from pw_ray import storage

    try:
        text = storage.read_text(str(uri))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {uri}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config {uri} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {uri} must be a mapping at the top level")
    cfg = parse_config(data, overrides)
    if check_root:
        check_storage_root(cfg.root)
    return cfg


def check_storage_root(root: str, write: bool = True) -> None:
    """Check the storage root can hold the run's outputs, by writing a probe file (``write``) or,
    writing nothing, that it is or can become a writable local folder; a :class:`ConfigError`
    naming ``root`` if not."""
    from pw_ray import storage

    try:
        storage.check_writable(root) if write else storage.check_creatable(root)
    except storage.RootNotWritable as err:
        raise ConfigError(f"invalid config:\n  root: {err}") from None


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
