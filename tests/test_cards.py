"""pw_ray.cards: dataset and model cards hold the run's own numbers; shards load with `datasets`."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pw_ray import cards as C
from pw_ray import storage
from pw_ray.config import parse_config

_BASE = {"root": "/tmp/unused", "pretrain_sets": [{"name": "eu", "region": "eu", "size": 4}]}


def test_recipe_says_where_each_hyper_parameter_came_from():
    cfg = parse_config({**_BASE, "train": {"blr": 2e-4, "batch_size": 64, "accum_steps": 2}})
    rows = {r["name"]: r for r in C.recipe(cfg, {"total_steps": 10})}
    assert rows["train.blr"] == {"name": "train.blr", "value": 2e-4, "source": "config (train.blr)", "paper": 1e-4}
    assert rows["train.weight_decay"]["source"] == "pw-ray default (train.weight_decay)"
    assert rows["effective batch"]["value"] == 128 and rows["effective batch"]["paper"] == 4096
    assert rows["learning rate"]["value"] == pytest.approx(2e-4 * 128 / 256)
    assert rows["optimizer"]["source"].startswith("fixed in code")
    assert rows["total steps"]["value"] == 10


def test_licences_attribute_real_imagery_and_known_layers():
    cfg = parse_config({**_BASE, "stac": {"kind": "api", "url": "https://example.test/stac",
                                          "datetime": "2021-01-01/2022-12-31",
                                          "landcover": {"collection": "esa-worldcover"},
                                          "biome_path": "s3://b/Ecoregions2017.geojson"}})
    by_layer = {x["layer"]: x for x in C.licences(cfg)}
    assert by_layer["imagery"]["attribution"] == "Contains modified Copernicus Sentinel data 2021-2022"
    assert "Copernicus Sentinel data terms" in by_layer["imagery"]["licence"]
    assert by_layer["land cover"]["licence"] == "CC BY 4.0" and "WorldCover" in by_layer["land cover"]["attribution"]
    assert by_layer["biomes"]["licence"] == "CC BY 4.0" and "Dinerstein" in by_layer["biomes"]["attribution"]
    assert "public domain" in by_layer["continents"]["licence"]
    other = parse_config({**_BASE, "stac": {"kind": "api", "url": "https://x.test", "biome_path": "/my/biomes.geojson"}})
    assert {x["layer"]: x for x in C.licences(other)}["biomes"]["licence"].startswith("unknown: state the licence")


# ----------------------------------------------------------------------------- on the tiny run
@pytest.mark.slow
def test_dataset_card_holds_the_runs_own_numbers(tiny_run):
    from pw_ray import experiment as E
    from pw_ray import leakage as L
    from pw_ray.ingest import shards as S

    cfg, _ = tiny_run
    diversity = storage.read_table(storage.join(cfg.root, "results", "diversity.parquet")).to_pandas()
    record = L.read_record(cfg.root)["sets"]
    for s in cfg.pretrain_sets:
        card = C.read_card(C.dataset_card_dir(cfg.root, s.name))
        manifest = storage.read_table(storage.join(cfg.root, "manifest", f"{s.name}.parquet")).to_pandas()
        chips = S.read_set(cfg.root, s.name, columns=["region", "biome", "landcover"]).to_pandas()
        assert card["name"] == s.name and card["config_digest"] == E._digest(cfg)
        assert card["sampling"]["size"] == s.size and card["sampling"]["seed"] == s.seed
        assert card["sampling"]["weights"] == s.weights()
        ex = card["sampling"]["exclusion"]
        assert ex["on"] and ex["exclusion_m"] == pytest.approx(cfg.exclusion_m)
        assert ex["replaced"] == record[s.name]["replaced"] and ex["held_out_points"] == record[s.name]["held_out_points"]
        assert card["counts"]["points"] == s.size
        assert card["counts"]["chips"] == {k: int((manifest["status"] == k).sum()) for k in ("ok", "skipped", "failed")}
        assert card["counts"]["chips_in_shards"] == len(chips) == card["counts"]["chips"]["ok"]
        assert sum(card["counts"]["reasons"]["skipped"].values()) == card["counts"]["chips"]["skipped"]
        for key in ("region", "biome", "landcover"):
            assert card["composition"][key] == chips[key].value_counts().to_dict()
        row = diversity.set_index("pretrain_set").loc[s.name]
        assert card["diversity"] == pytest.approx({k: float(row[k]) for k in C.DIVERSITY_KEYS})
        assert card["source"]["collection"] == cfg.stac.collection and card["source"]["datetime"] == cfg.stac.datetime
        assert {x["layer"] for x in card["licences"]} == {"imagery", "continents", "biomes", "land cover"}
        assert card["loading"]["chip_shape"] == [len(cfg.chips.bands), cfg.chips.size_px, cfg.chips.size_px]
        readme = storage.read_text(storage.join(C.dataset_card_dir(cfg.root, s.name), C.CARD_MD))
        assert f"| chips ok | {card['counts']['chips']['ok']} |" in readme
        assert f"| candidates replaced by the exclusion | {ex['replaced']} |" in readme
        assert f"| continent_entropy | {row['continent_entropy']:.4f} |" in readme


@pytest.mark.slow
def test_model_card_holds_the_runs_own_numbers(tiny_run):
    from pw_ray.models.satmae import build_mae, parameter_counts
    from pw_ray.pretrain.trainer import export_dir

    cfg, _ = tiny_run
    model = build_mae(cfg.model.preset, list(cfg.chips.bands), [list(g) for g in cfg.model.groups],
                      img_size=cfg.chips.size_px, patch_size=cfg.model.patch_size)
    counts = parameter_counts(model)
    for name in [s.name for s in cfg.pretrain_sets] + ["zero"]:
        card = C.read_card(C.model_card_dir(cfg.root, name))
        summary = json.loads(storage.read_text(storage.join(export_dir(cfg.root, name), "summary.json")))
        assert card["parameters"]["encoder_trainable"] == counts["encoder"]
        assert card["parameters"]["mae_trainable"] == counts["total"]
        assert card["training"]["steps"] == summary["steps"]
        assert card["training"]["final_loss"] == summary.get("final_loss")
        assert card["architecture"]["embed_dim"] == model.embed_dim and card["architecture"]["depth"] == model.depth
        if name == "zero":
            assert card["pretraining_set"] is None
        else:
            assert card["pretraining_set"]["card"] == storage.join(cfg.root, "shards", name, "README.md")
            assert {r["name"]: r["value"] for r in card["recipe"]}["train.blr"] == cfg.train.blr


@pytest.mark.slow
def test_model_card_loader_runs_with_torch_and_timm_alone(tiny_run, tmp_path):
    cfg, _ = tiny_run
    readme = storage.read_text(storage.join(C.model_card_dir(cfg.root, "europe"), C.CARD_MD))
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    (tmp_path / "standalone_loader.py").write_text(blocks[-1])  # the loader, as the card prints it
    export = storage.local_path(C.model_card_dir(cfg.root, "europe"))
    script = ("import sys, torch; sys.modules['pw_ray'] = None  # pw-ray must not be needed\n"
              "from standalone_loader import load_encoder\n"
              f"enc = load_encoder({export!r})\n"
              f"print(tuple(enc.embed(torch.rand(2, {len(cfg.chips.bands)}, {cfg.chips.size_px}, "
              f"{cfg.chips.size_px})).shape))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)}, timeout=300)
    assert out.returncode == 0, out.stderr
    card = C.read_card(C.model_card_dir(cfg.root, "europe"))
    assert out.stdout.strip() == f"(2, {card['architecture']['embed_dim']})"


@pytest.mark.slow
def test_shards_load_with_hugging_face_datasets(tiny_run, tmp_path):
    """The two lines of the dataset card; with `webdataset` where `datasets` is not installed."""
    from pw_ray.ingest import shards as S

    cfg, _ = tiny_run
    folder = storage.local_path(C.dataset_card_dir(cfg.root, "africa"))
    ours = S.read_set(cfg.root, "africa").to_pandas().set_index("chip_id")
    shape = C.read_card(folder)["loading"]["chip_shape"]
    pixels = dict(zip(ours.index, S.read_pixels(S.read_set(cfg.root, "africa"))))
    try:
        from datasets import load_dataset
    except ImportError:
        load_dataset = None
    if load_dataset is not None:
        pq_ds = load_dataset("parquet", data_files=f"{folder}/**/*.parquet", split="train", cache_dir=str(tmp_path))
        wds_ds = load_dataset("webdataset", data_files=f"{folder}/**/*.tar", split="train", cache_dir=str(tmp_path))
        by_readme = load_dataset(folder, split="train", cache_dir=str(tmp_path))  # the card's front matter
        assert len(pq_ds) == len(wds_ds) == len(by_readme) == len(ours)
        for row in pq_ds:
            px = np.frombuffer(row["pixels"], "<u2").reshape(shape)
            assert np.array_equal(px, pixels[row["chip_id"]]) and row["lon"] == ours.loc[row["chip_id"], "lon"]
        for row in wds_ds:
            assert np.array_equal(np.asarray(row["npy"]), pixels[row["json"]["chip_id"]])
    else:
        import webdataset as wds

        tars = sorted(str(p) for p in Path(folder).rglob("*.tar"))
        rows = list(wds.WebDataset(tars, shardshuffle=False).decode())
        assert len(rows) == len(ours)
        for row in rows:
            assert np.array_equal(row["npy"], pixels[row["json"]["chip_id"]])


@pytest.mark.slow
def test_leakage_audit_of_the_run_finds_nothing_within_the_exclusion(tiny_run):
    from pw_ray import leakage as L

    cfg, report = tiny_run
    audit = L.read_audit(cfg.root)
    assert len(audit) == len(cfg.pretrain_sets) * len(cfg.tasks)  # test split only (the default)
    assert audit["exclusion"].all() and np.allclose(audit["distance_m"], cfg.exclusion_m)
    assert (audit["n_held_out"] > 0).all() and (audit["min_distance_m"] > cfg.exclusion_m).all()
    assert (audit["n_held_out_within"] == 0).all() and (audit["n_pretrain_within"] == 0).all()
    record = L.read_record(cfg.root)["sets"]
    assert audit.set_index("pretrain_set")["replaced"].groupby(level=0).first().to_dict() == {
        k: v["replaced"] for k, v in record.items()}
    readme = storage.read_text(storage.join(cfg.root, "report", "README.md"))
    section = readme.split("## Leakage audit")[1].split("\n## ")[0]
    row = audit.iloc[0]
    assert (f"| {row.pretrain_set} | {row.task} | test | {row.n_held_out} | {row.min_distance_m:.0f} |"
            in section)
    assert readme.split("## Main results")[0].count("the audit finds 0 test chips within that distance") == 1
