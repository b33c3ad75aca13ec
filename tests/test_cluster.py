"""The cluster launcher configs (cluster.yaml for AWS, cluster-gcp.yaml for GCP), checked offline.

Two layers of checks:

1. Ray's own validation: the autoscaler's JSON schema shipped in the installed wheel
   (``ray/autoscaler/ray-schema.json``) on the file as written, then
   ``prepare_config`` (merges the provider's ``defaults.yaml``, fills per-type worker limits,
   checks the docker section) and ``validate_config`` (schema again on the merged config, plus
   head type / min_workers sums) — exactly what ``ray up`` runs before it touches a cloud.
   Neither needs boto3 or the Google API client nor any network: the cloud-specific
   ``bootstrap_aws`` / ``bootstrap_gcp`` step (key pairs, subnets, IAM) is the part ``ray up``
   does online, and it is not exercised here. The schema leaves ``node_config`` free-form, so
   typos inside it (e.g. ``InstanceMarketOption``) are caught only by the property checks below.
2. The properties the runbook relies on: a head that schedules nothing, GPU workers that
   start from zero on spot/preemptible capacity, CPU ingest workers, one image on every
   node, an idle timeout, instance-role/service-account credentials and none in the file.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"aws": REPO / "cluster.yaml", "gcp": REPO / "cluster-gcp.yaml"}


def _schema() -> dict:
    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    return json.loads(path.read_text())


@pytest.fixture(params=sorted(CONFIGS), ids=lambda p: CONFIGS[p].name)
def cluster(request):
    """(provider name, raw text, parsed YAML) of one cluster config."""
    path = CONFIGS[request.param]
    text = path.read_text()
    return request.param, text, yaml.safe_load(text)


def _types(cfg: dict) -> dict:
    return cfg["available_node_types"]


def _gpu_types(cfg: dict) -> dict:
    return {k: v for k, v in _types(cfg).items() if v.get("resources", {}).get("GPU", 0) > 0}


# --- Ray's validation -------------------------------------------------------------------


def test_matches_ray_schema(cluster):
    _, _, cfg = cluster
    jsonschema.validate(cfg, _schema())


def test_prepare_and_validate_config(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    _, _, cfg = cluster
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    # prepare_config merged the provider defaults without overriding our choices.
    assert prepared["cluster_name"] == "pw-ray"
    assert prepared["head_setup_commands"] == [] and prepared["worker_setup_commands"] == []
    for name, node_type in _types(prepared).items():
        assert "max_workers" in node_type, name


def test_validation_is_live(cluster):
    """A misspelt top-level key must fail, or the two tests above prove nothing."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    _, _, cfg = cluster
    bad = copy.deepcopy(cfg)
    bad["idle_timeout_minute"] = bad.pop("idle_timeout_minutes")
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


# --- the properties the runbook relies on ---------------------------------------------------


def test_head_schedules_but_does_not_train(cluster):
    _, _, cfg = cluster
    head = _types(cfg)[cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "the head must advertise CPU: 0 so no work lands there"
    assert head["resources"].get("GPU", 0) == 0
    assert head.get("max_workers", 0) == 0
    start = " ".join(cfg["head_start_ray_commands"])
    assert "--head" in start and "--num-cpus=0" in start
    # The head runs on demand: losing it loses the cluster.
    node_config = head["node_config"]
    assert "InstanceMarketOptions" not in node_config
    assert not node_config.get("scheduling", {}).get("preemptible", False)


def test_gpu_workers_autoscale_from_zero_on_spot(cluster):
    provider, _, cfg = cluster
    gpu = _gpu_types(cfg)
    assert "gpu_spot" in gpu, f"no GPU worker type named gpu_spot; GPU types: {sorted(gpu)}"
    for name, node_type in gpu.items():
        assert name != cfg["head_node_type"]
        assert node_type["min_workers"] == 0, f"{name} must scale from zero"
        assert node_type["max_workers"] >= 1
        assert node_type["resources"]["CPU"] >= 1
        node_config = node_type["node_config"]
        if provider == "aws":
            assert node_config["InstanceMarketOptions"]["MarketType"] == "spot", name
        else:
            scheduling = node_config["scheduling"]
            assert isinstance(scheduling, dict), "GCP's scheduling is an object, not a list"
            assert scheduling.get("preemptible") is True or scheduling.get("provisioningModel") == "SPOT"
            assert scheduling.get("onHostMaintenance") == "TERMINATE"  # required with GPUs


def test_cpu_ingest_workers(cluster):
    _, _, cfg = cluster
    ingest = _types(cfg)["cpu_ingest"]
    assert ingest["min_workers"] == 0
    assert ingest["max_workers"] >= 1
    assert ingest["resources"]["CPU"] >= 1 and ingest["resources"].get("GPU", 0) == 0


def test_per_type_caps_fit_the_global_cap(cluster):
    _, _, cfg = cluster
    workers = [t for k, t in _types(cfg).items() if k != cfg["head_node_type"]]
    assert sum(t["max_workers"] for t in workers) <= cfg["max_workers"]
    assert sum(t.get("min_workers", 0) for t in workers) == 0  # an idle cluster is the head alone


def test_docker_image_on_every_node(cluster):
    _, _, cfg = cluster
    docker = cfg["docker"]
    assert docker.get("image", "").strip(), "docker.image must be set"
    assert docker.get("container_name") and docker.get("pull_before_run") is True
    assert "pw-ray" in docker["image"]
    # No head/worker override that would put another (or no) image on some nodes.
    for key in ("head_image", "worker_image"):
        assert docker.get(key, docker["image"]).strip() == docker["image"]
    for name, node_type in _types(cfg).items():
        assert "worker_image" not in node_type.get("docker", {}), name


def test_idle_timeout_and_usage_stats(cluster):
    _, _, cfg = cluster
    assert isinstance(cfg["idle_timeout_minutes"], (int, float)) and cfg["idle_timeout_minutes"] > 0
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "--disable-usage-stats" in cfg[key][-1], key


def test_setup_is_in_the_image(cluster):
    _, _, cfg = cluster
    assert cfg["setup_commands"] == []
    assert cfg.get("head_setup_commands", []) == [] and cfg.get("worker_setup_commands", []) == []


def test_cloud_identity_not_keys(cluster):
    """Storage access comes from the instance profile / service account on every worker."""
    provider, _, cfg = cluster
    for name, node_type in _types(cfg).items():
        node_config = node_type["node_config"]
        if provider == "aws":
            assert node_config["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name
        elif name != cfg["head_node_type"]:  # Ray gives the GCP head its own service account
            assert node_config["serviceAccounts"][0]["email"], name


_FORBIDDEN = [
    r"aws_access_key_id", r"aws_secret_access_key", r"secret", r"aws_session_token",
    r"AKIA[0-9A-Z]{16}", r"ASIA[0-9A-Z]{16}",               # AWS access key ids
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----", r"private_key",
    r"gcp_credentials", r"\"type\":\s*\"service_account\"",  # inline GCP key material
    r"password\s*[:=]", r"--password[\s=]",                  # `--password-stdin` from the role is fine
]


def test_no_credentials_in_file(cluster):
    provider, text, cfg = cluster
    for pattern in _FORBIDDEN:
        match = re.search(pattern, text, flags=re.IGNORECASE)
        assert match is None, f"{CONFIGS[provider].name} contains {match.group(0)!r}"
    assert "ssh_private_key" not in cfg.get("auth", {})
    assert "gcp_credentials" not in cfg["provider"]


def test_storage_root_documented(cluster):
    provider, text, _ = cluster
    scheme = "s3://" if provider == "aws" else "gs://"
    assert f"--root {scheme}" in text
