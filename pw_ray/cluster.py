"""Does a config's work fit a Ray cluster? Node types of a cluster launcher YAML against the
resource requests of an experiment config.

A Ray cluster YAML (``cluster.yaml``, ``cluster-gcp.yaml``, or the ``~/ray_bootstrap_config.yaml``
that ``ray up`` leaves on the head) names its node types under ``available_node_types``, each with
``resources`` (``CPU``, ``GPU``, custom names; ``memory`` in bytes if given) and ``max_workers``,
and a global ``max_workers`` on worker nodes. A config asks for bundles of resources (a Ray Data
ingest task: ``{CPU: 1}``; a Ray Train worker: ``{CPU: train.cpus_per_worker, GPU: 1}``; a probe
trial: ``{CPU: evaluation.cpus_per_trial, GPU: evaluation.gpus_per_probe}``) and how many of them
at once. :func:`check_fit` says, in the config's and the YAML's own names, which bundle fits no
node type (the work could never be scheduled: a problem) and where the cluster at full scale holds
fewer bundles than the config asks to run at once (a shortfall: the work runs, narrower).

Pure: no Ray, no network. ``pw-ray validate --cluster`` and ``pw-ray estimate --cluster`` print
the report; ingest sizes its task pool with :func:`discover_max_cpus`.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

#: Where ``ray up`` leaves the cluster's (prepared) config on the head node, which is also where
#: ``ray job submit`` runs job drivers; ingest reads it to learn how far the cluster can grow.
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
#: Environment variable naming a cluster YAML (path or URI) when the bootstrap config is elsewhere.
CLUSTER_YAML_ENV = "PW_RAY_CLUSTER_YAML"
# Ray allows fractional resources to 1e-4; floor(node / bundle) must not lose 1 to float error.
_EPS = 1e-6


class ClusterError(ValueError):
    """A cluster YAML that cannot be read as Ray node types; the message names the file and key."""


# ----------------------------------------------------------------------------- the cluster
@dataclass(frozen=True)
class NodeType:
    """One entry of ``available_node_types``. ``max_workers`` is 1 for the head (it always runs)."""

    name: str
    resources: dict[str, float]
    max_workers: int
    is_head: bool = False

    @property
    def has_gpu(self) -> bool:
        return self.resources.get("GPU", 0) > 0

    def holds(self, bundle: dict[str, float]) -> int:
        """How many copies of ``bundle`` one node of this type holds at once (0: not even one).

        ``memory`` limits only where the node type declares it (Ray measures it on the node)."""
        fits = math.inf
        for key, want in bundle.items():
            if want <= 0:
                continue
            if key == "memory" and key not in self.resources:
                continue
            fits = min(fits, math.floor(self.resources.get(key, 0.0) / want + _EPS))
        return int(min(fits, 1 << 30))  # an empty bundle fits any number of times

    def why_not(self, bundle: dict[str, float]) -> str:
        """Why one ``bundle`` does not fit on this type, e.g. ``CPU 8 > 4`` or ``no GPU``."""
        out = []
        for key, want in bundle.items():
            if want <= 0 or (key == "memory" and key not in self.resources):
                continue
            have = self.resources.get(key, 0.0)
            if have + _EPS < want:
                out.append(f"no {key}" if have == 0 else f"{key} {_num(want)} > {_num(have)}")
        return ", ".join(out)


@dataclass(frozen=True)
class ClusterSpec:
    """The node types of a cluster YAML and its global cap on worker nodes."""

    source: str
    node_types: tuple[NodeType, ...]
    #: Global ``max_workers``: worker nodes of all types together (None: not set).
    max_workers: int | None = None

    def describe(self) -> str:
        """``head {CPU: 0}, cpu_ingest {CPU: 16} × 0–20, gpu_spot {CPU: 8, GPU: 1} × 0–16; max_workers 36``."""
        parts = [f"{t.name} {_bundle(t.resources)}" + ("" if t.is_head else f" × ≤{t.max_workers}")
                 for t in self.node_types]
        cap = f"; max_workers {self.max_workers}" if self.max_workers is not None else ""
        return ", ".join(parts) + cap


def parse_cluster(data: dict, source: str = "<cluster>") -> ClusterSpec:
    """A :class:`ClusterSpec` from a parsed cluster YAML (``available_node_types``, ``head_node_type``)."""
    if not isinstance(data, dict) or not isinstance(data.get("available_node_types"), dict):
        raise ClusterError(f"{source}: no 'available_node_types' mapping; a Ray cluster YAML names its node "
                           "types there (see cluster.yaml)")
    head = data.get("head_node_type")
    types = []
    for name, spec in data["available_node_types"].items():
        res = (spec or {}).get("resources")
        if not isinstance(res, dict):
            raise ClusterError(f"{source}: available_node_types.{name}.resources is missing; give the node's "
                               "resources, e.g. {CPU: 8, GPU: 1} (Ray cannot plan for a type without them offline)")
        try:
            res = {str(k): float(v) for k, v in res.items()}
        except (TypeError, ValueError):
            raise ClusterError(f"{source}: available_node_types.{name}.resources must map names to numbers, "
                               f"got {res!r}") from None
        is_head = name == head
        types.append(NodeType(name, res, 1 if is_head else int(spec.get("max_workers", 0)), is_head))
    cap = data.get("max_workers")
    return ClusterSpec(source, tuple(types), None if cap is None else int(cap))


def load_cluster(uri: str | Path) -> ClusterSpec:
    """Read a cluster YAML from a path or URI."""
    from pw_ray import storage

    uri = os.path.expanduser(str(uri))
    try:
        text = storage.read_text(uri)
    except FileNotFoundError:
        raise ClusterError(f"cluster YAML not found: {uri}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ClusterError(f"cluster YAML {uri} is not valid YAML: {err}") from None
    return parse_cluster(data, Path(uri).name if not storage.is_remote(uri) else uri)


# ----------------------------------------------------------------------------- placing bundles
@dataclass
class Placement:
    """Copies of one bundle the cluster holds at once at full scale, and the nodes they take."""

    copies: int
    nodes: dict[str, int] = field(default_factory=dict)  # node type → nodes used
    #: Whether the global ``max_workers`` (not a type's own cap) stopped the placement.
    capped_globally: bool = False


def _candidates(spec: ClusterSpec, bundle: dict[str, float]) -> list[NodeType]:
    """Node types a bundle may go to, most copies per node first. A bundle without GPUs is kept off
    GPU node types whenever a CPU-only type holds it: Ray's autoscaler does not launch GPU nodes
    for CPU-only work (``AUTOSCALER_CONSERVE_GPU_NODES``)."""
    fit = [t for t in spec.node_types if t.holds(bundle) > 0]
    if bundle.get("GPU", 0) <= 0 and any(not t.has_gpu for t in fit):
        fit = [t for t in fit if not t.has_gpu]
    return sorted(fit, key=lambda t: (not t.is_head, -t.holds(bundle), t.name))


def place(spec: ClusterSpec, bundle: dict[str, float], wanted: int | None = None) -> Placement:
    """Place up to ``wanted`` copies of ``bundle`` (None: as many as fit) on the cluster grown to
    its caps: the head first (it is always there), then worker types holding the most copies per
    node, each up to its ``max_workers``, all worker nodes together up to the global cap."""
    out = Placement(0)
    budget = spec.max_workers if spec.max_workers is not None else math.inf
    for t in _candidates(spec, bundle):
        left = math.inf if wanted is None else wanted - out.copies
        if left <= 0:
            break
        per_node = t.holds(bundle)
        need = math.ceil(left / per_node) if left != math.inf else math.inf
        nodes = min(t.max_workers, need)
        if not t.is_head:
            if nodes > budget:
                nodes, out.capped_globally = budget, True
            budget -= nodes
        if nodes > 0:
            out.nodes[t.name] = int(nodes)
            out.copies += int(min(nodes * per_node, left))
    return out


def max_cpus(spec: ClusterSpec) -> int:
    """One-CPU tasks the cluster runs at once at full scale (the ceiling of ingest's task pool)."""
    return place(spec, {"CPU": 1}).copies


def discover_max_cpus(explicit: float | None = None) -> tuple[float | None, str]:
    """How many CPUs this cluster can grow to, and where that figure came from.

    In order: ``explicit`` (``chips.ingest_max_cpus``); the cluster YAML named by
    ``$PW_RAY_CLUSTER_YAML``; ``~/ray_bootstrap_config.yaml`` (``ray up`` writes it on the head,
    where job drivers run). ``(None, reason)`` when none is known (a laptop, a cluster without an
    autoscaler config): callers then size by the work itself.
    """
    if explicit:
        return float(explicit), "chips.ingest_max_cpus"
    candidates = []
    if os.environ.get(CLUSTER_YAML_ENV):
        candidates.append((os.environ[CLUSTER_YAML_ENV], f"${CLUSTER_YAML_ENV}"))
    candidates.append((os.path.expanduser(BOOTSTRAP_CONFIG), BOOTSTRAP_CONFIG))
    for uri, label in candidates:
        if label == BOOTSTRAP_CONFIG and not os.path.exists(uri):
            continue
        try:
            spec = load_cluster(uri)
        except ClusterError as err:
            log.warning("cluster: cannot read %s (%s): %s", label, uri, err)
            continue
        return float(max_cpus(spec)), f"{label} ({uri}: {spec.describe()})"
    return None, "no chips.ingest_max_cpus, no $PW_RAY_CLUSTER_YAML, no ~/ray_bootstrap_config.yaml"


# ----------------------------------------------------------------------------- what a config asks for
@dataclass(frozen=True)
class Request:
    """A bundle of resources one piece of a stage's work asks for, and how many at once."""

    stage: str
    what: str
    bundle: dict[str, float]
    #: The config fields that set the bundle.
    fields: tuple[str, ...]
    #: Copies that must be placed together for the work to start at all (a Ray Train worker group).
    required: int = 1
    #: Copies the config asks to run at once (None: as many as the cluster gives).
    wanted: int | None = None
    #: What sets ``wanted``, in words (``evaluation.max_concurrent``).
    wanted_by: str = ""


def config_requests(cfg) -> list[Request]:
    """Every resource request an :class:`~pw_ray.config.ExperimentConfig` makes, stage by stage."""
    c, t, ev = cfg.chips, cfg.train, cfg.evaluation
    out = [Request("ingest", "ingest task (scene search, chip reading and writing)", {"CPU": 1},
                   ("Ray Data tasks of 1 CPU",), wanted=c.ingest_parallelism,
                   wanted_by="chips.ingest_parallelism" if c.ingest_parallelism else "")]
    worker = {"CPU": float(t.cpus_per_worker), **({"GPU": 1.0} if t.use_gpu else {}),
              **{k: float(v) for k, v in t.resources_per_worker.items()}}
    n_sets = len(cfg.pretrain_sets)
    out.append(Request("pretrain", "Ray Train worker", worker,
                       ("train.cpus_per_worker", "train.use_gpu", "train.resources_per_worker"),
                       required=t.num_workers, wanted=t.num_workers * n_sets,
                       wanted_by=f"train.num_workers {t.num_workers} × {n_sets} sets training at once"))
    probes = [m for m in ev.methods if m in ("knn", "linear")]
    if cfg.tasks and probes:
        if ev.cache_embeddings:
            out.append(Request("evaluate", "embedding task (one per encoder and task)",
                               {"CPU": 1.0, "GPU": float(ev.gpus_per_probe)}, ("evaluation.gpus_per_probe",)))
        out.append(Request("evaluate", f"{'/'.join(probes)} trial",
                           {"CPU": float(ev.cpus_per_trial), "GPU": float(ev.gpus_per_probe)},
                           ("evaluation.cpus_per_trial", "evaluation.gpus_per_probe"),
                           wanted=ev.max_concurrent, wanted_by="evaluation.max_concurrent"))
    if cfg.tasks and "finetune" in ev.methods:
        out.append(Request("evaluate", "fine-tune trial",
                           {"CPU": float(ev.cpus_per_trial), "GPU": float(ev.gpus_per_finetune)},
                           ("evaluation.cpus_per_trial", "evaluation.gpus_per_finetune"),
                           wanted=ev.max_concurrent, wanted_by="evaluation.max_concurrent"))
    out.append(Request("analyze", "diversity task (one per shard file)", {"CPU": 1.0}, ("Ray Data tasks of 1 CPU",)))
    return [Request(r.stage, r.what, {k: v for k, v in r.bundle.items() if v > 0}, r.fields, r.required, r.wanted,
                    r.wanted_by) for r in out]


# ----------------------------------------------------------------------------- the check
@dataclass
class Fit:
    request: Request
    placement: Placement

    @property
    def fits(self) -> bool:
        return self.placement.copies >= self.request.required

    @property
    def short(self) -> bool:
        return self.fits and self.request.wanted is not None and self.placement.copies < self.request.wanted


@dataclass
class FitReport:
    cluster: ClusterSpec
    fits: list[Fit]
    #: The work can never be scheduled on this cluster.
    problems: list[str]
    #: The work runs, with fewer copies at once than the config asks for.
    shortfalls: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems and not self.shortfalls

    def lines(self) -> list[str]:
        """One line per request (what it asks for, where it goes), then the problems and shortfalls."""
        out = [f"cluster {self.cluster.source}: {self.cluster.describe()}"]
        for f in self.fits:
            r, p = f.request, f.placement
            where = ", ".join(f"{n} × {name}" for name, n in p.nodes.items()) or "nowhere"
            want = "" if r.wanted is None else f"; asks for {r.wanted} at once ({r.wanted_by})"
            out.append(f"  {r.stage}: {r.what} {_bundle(r.bundle)}: up to {p.copies} at once on {where}{want}")
        out += [f"  PROBLEM: {p}" for p in self.problems]
        out += [f"  SHORTFALL: {s}" for s in self.shortfalls]
        return out


def check_fit(cfg, spec: ClusterSpec) -> FitReport:
    """Every request of ``cfg`` against ``spec``'s node types and caps (see the module docstring)."""
    fits, problems, shortfalls = [], [], []
    for r in config_requests(cfg):
        wanted = None if r.wanted is None else max(r.wanted, r.required)
        fit = Fit(r, place(spec, r.bundle, wanted))
        fits.append(fit)
        fields = ", ".join(r.fields)
        if fit.placement.copies == 0:
            why = "; ".join(f"{t.name} {_bundle(t.resources)}: {t.why_not(r.bundle)}" for t in spec.node_types)
            problems.append(f"{r.stage}: {r.what} {_bundle(r.bundle)} ({fields}) fits no node type of "
                            f"{spec.source} ({why}); lower the request or add a node type that has it")
        elif not fit.fits:
            problems.append(f"{r.stage}: {r.required} × {r.what} {_bundle(r.bundle)} must run together (one set's "
                            f"worker group: train.num_workers), but {spec.source} holds at most "
                            f"{fit.placement.copies} at once ({_caps(spec, fit)}); {_advice(fit)}")
        elif fit.short:
            shortfalls.append(f"{r.stage}: {r.wanted_by} asks for {r.wanted} × {r.what} {_bundle(r.bundle)} at once; "
                              f"{spec.source} holds at most {fit.placement.copies} ({_caps(spec, fit)}); "
                              f"{_advice(fit)}")
    return FitReport(spec, fits, problems, shortfalls)


def _caps(spec: ClusterSpec, fit: Fit) -> str:
    parts = []
    for name, n in fit.placement.nodes.items():
        t = next(t for t in spec.node_types if t.name == name)
        parts.append(f"{name}: {t.holds(fit.request.bundle)} per node × {n} node{'s' if n != 1 else ''}"
                     + ("" if t.is_head else f" of max_workers {t.max_workers}"))
    if fit.placement.capped_globally:
        parts.append(f"the global max_workers {spec.max_workers} is reached")
    return "; ".join(parts) or "no node type holds it"


def _advice(fit: Fit) -> str:
    r = fit.request
    knob = r.wanted_by.split(" ")[0] if r.wanted_by else "train.num_workers"
    return (f"raise max_workers of the node types above (and the global max_workers), use bigger nodes, "
            f"or lower {knob}")


def _num(v: float) -> str:
    return f"{v:g}"


def _bundle(res: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {_num(v)}" for k, v in res.items()) + "}"


__all__ = ["ClusterSpec", "NodeType", "Request", "FitReport", "ClusterError", "parse_cluster", "load_cluster",
           "place", "max_cpus", "discover_max_cpus", "config_requests", "check_fit"]
