import pytest
import yaml

from pw_ray.config import ConfigError, load_config, parse_config
from tests.conftest import TINY_CONFIG


def _with(**changes):
    d = {**TINY_CONFIG, "root": "/tmp/x"}
    d.update(changes)
    return d


def test_demo_config_loads_and_has_the_seven_sets_and_the_diverse_one(tmp_path):
    from pw_ray.cli import DEMO_CONFIG

    cfg = load_config(DEMO_CONFIG, {"root": str(tmp_path)})
    assert [s.region for s in cfg.pretrain_sets] == ["af", "as", "eu", "na", "oc", "sa", "global", "global"]
    assert [s.strategy for s in cfg.pretrain_sets] == ["random"] * 7 + ["spectral-diverse"]
    diverse, glob = cfg.pretrain_set("diverse"), cfg.pretrain_set("global")
    assert diverse.size == glob.size and diverse.candidates == 8
    assert cfg.root == str(tmp_path)


def test_strategy_defaults_to_random_and_names_its_allowed_values():
    cfg = parse_config(_with())
    assert {s.strategy for s in cfg.pretrain_sets} == {"random"}
    sets = [dict(TINY_CONFIG["pretrain_sets"][0], strategy="greedy")]
    with pytest.raises(ConfigError, match=r"pretrain_sets\[0\]\.strategy: Input should be 'random' or "
                                          r"'spectral-diverse'"):
        parse_config(_with(pretrain_sets=sets))


def test_builder_options_on_a_random_set_are_refused_by_name():
    sets = [dict(TINY_CONFIG["pretrain_sets"][0], candidates=4)]
    with pytest.raises(ConfigError, match=r"pretrain_sets\[0\]: candidates apply to strategy: spectral-diverse only"):
        parse_config(_with(pretrain_sets=sets))
    sets = [dict(TINY_CONFIG["pretrain_sets"][0], strategy="spectral-diverse", candidates=1)]
    with pytest.raises(ConfigError, match=r"pretrain_sets\[0\]\.candidates: Input should be greater than or equal to 2"):
        parse_config(_with(pretrain_sets=sets))


def test_a_dumped_config_with_random_sets_loads_again():
    from pw_ray.config import dump_config

    cfg = parse_config(_with())
    again = parse_config(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


def test_a_changed_strategy_changes_the_points_lineage():
    from pw_ray.experiment import points_record

    cfg = parse_config(_with())
    plain = cfg.pretrain_set("global")
    diverse = plain.model_copy(update={"strategy": "spectral-diverse"})
    a, b = points_record(cfg, "pretrain", plain), points_record(cfg, "pretrain", diverse)
    assert a["digest"] != b["digest"]
    assert "signatures" not in a["inputs"]
    # A diverse set's points also depend on what decides its signatures.
    assert b["inputs"]["signatures"]["spectral_bins"] == cfg.analysis.spectral_bins
    assert b["inputs"]["signatures"]["chips"]["size_px"] == cfg.chips.size_px
    more = parse_config(_with(analysis={**TINY_CONFIG["analysis"], "spectral_bins": 8}))
    assert points_record(more, "pretrain", diverse)["digest"] != b["digest"]
    assert points_record(more, "pretrain", plain)["digest"] == a["digest"]


def test_global_weights_are_equal_sixths():
    cfg = parse_config(_with())
    w = cfg.pretrain_set("global").weights()
    assert sorted(w) == ["af", "as", "eu", "na", "oc", "sa"]
    assert all(abs(v - 1 / 6) < 1e-12 for v in w.values())


def test_unknown_region_names_field_and_allowed_values():
    sets = [dict(TINY_CONFIG["pretrain_sets"][0], region="antarctica")]
    with pytest.raises(ConfigError) as e:
        parse_config(_with(pretrain_sets=sets))
    msg = str(e.value)
    assert "pretrain_sets[0].region" in msg
    assert "antarctica" in msg and "af, as, eu, na, oc, sa, global" in msg


def test_negative_size_names_field():
    sets = [dict(TINY_CONFIG["pretrain_sets"][0], size=-5)]
    with pytest.raises(ConfigError, match=r"pretrain_sets\[0\]\.size: Input should be greater than 0"):
        parse_config(_with(pretrain_sets=sets))


def test_unknown_band_names_field_and_allowed_bands():
    with pytest.raises(ConfigError) as e:
        parse_config(_with(chips={"bands": ["B02", "B13"]}))
    assert "chips.bands" in str(e.value) and "'B13'" in str(e.value) and "B8A" in str(e.value)


def test_band_aliases_are_canonicalised():
    cfg = parse_config(_with(chips={"bands": ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "b8a", "B11", "B12"]}))
    assert cfg.chips.bands[:3] == ["B02", "B03", "B04"] and "B8A" in cfg.chips.bands


def test_unknown_field_is_reported_as_typo():
    with pytest.raises(ConfigError, match=r"chips\.sise_px: unknown field"):
        parse_config(_with(chips={"sise_px": 96}))


def test_unreachable_root_fails_before_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg_file = tmp_path / "c.yaml"
    import yaml

    cfg_file.write_text(yaml.safe_dump(_with(root=str(blocker / "sub"))))
    with pytest.raises(ConfigError, match=r"root: storage root .* is not writable or not reachable"):
        load_config(cfg_file)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_model_groups_must_use_chip_bands():
    with pytest.raises(ConfigError, match="model.groups use bands not in chips.bands"):
        parse_config(_with(chips={"bands": ["B02", "B03", "B04", "B08"]}))


def test_chip_size_must_be_multiple_of_patch():
    with pytest.raises(ConfigError, match="multiple of model.patch_size"):
        parse_config(_with(chips={"size_px": 30}))


def test_api_source_requires_url():
    with pytest.raises(ConfigError, match="stac.url is required"):
        parse_config(_with(stac={"kind": "api"}))


def test_satmae_fidelity_options_default_to_the_official_recipe():
    cfg = parse_config(_with())
    assert (cfg.model.loss_pairing, cfg.model.spatial_mask, cfg.model.input_quantization) == ("official", False, "uint8")
    assert (cfg.train.precision, cfg.evaluation.pooling) == ("bf16", "mean_then_norm")


def test_official_loss_pairing_needs_every_chip_band_in_a_group():
    bands = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
    with pytest.raises(ConfigError, match=r"model.loss_pairing 'official'.*left out: \['B01'\].*per_group"):
        parse_config(_with(chips={"bands": bands}))
    cfg = parse_config(_with(chips={"bands": bands}, model={"loss_pairing": "per_group"}))
    assert cfg.model.loss_pairing == "per_group"


def test_unknown_pooling_names_the_field():
    with pytest.raises(ConfigError, match=r"evaluation.pooling: Input should be 'mean_then_norm' or 'norm_then_mean'"):
        parse_config(_with(evaluation={"pooling": "cls"}))


def test_paper_config_is_the_papers_vit_b_recipe():
    from pathlib import Path

    cfg = load_config(Path(__file__).parents[1] / "configs" / "paper.yaml", check_root=False)
    assert [(s.region, s.size) for s in cfg.pretrain_sets] == [(r, 700_000) for r in
                                                               ("af", "as", "eu", "na", "oc", "sa", "global")]
    assert cfg.root.startswith("s3://") and (cfg.stac.kind, cfg.stac.catalog) == ("api", "planetary-computer")
    assert (cfg.model.preset, cfg.model.patch_size, cfg.chips.size_px, cfg.model.mask_ratio) == ("base", 8, 96, 0.75)
    assert (cfg.model.loss_pairing, cfg.model.spatial_mask, cfg.model.input_quantization) == ("official", False, "uint8")
    t = cfg.train
    assert (t.epochs, t.warmup_epochs, t.batch_size * t.accum_steps * t.num_workers) == (50, 5, 4096)
    assert (t.blr, t.weight_decay, t.precision) == (1e-4, 0.05, "fp16")
    assert (t.checkpoint_every_min, t.checkpoint_every) == (30, None)  # a preempted spot GPU loses ≤ 30 min


def test_checkpoints_are_by_time_by_default_and_steps_alone_keep_meaning_steps():
    train = {k: v for k, v in TINY_CONFIG["train"].items() if k != "checkpoint_every"}
    t = parse_config(_with(train=train)).train
    assert (t.checkpoint_every_min, t.checkpoint_every) == (30.0, None)
    t = parse_config(_with(train={**train, "checkpoint_every": 7})).train  # a config from before
    assert (t.checkpoint_every_min, t.checkpoint_every) == (None, 7)
    t = parse_config(_with(train={**train, "checkpoint_every": 7, "checkpoint_every_min": 5})).train
    assert (t.checkpoint_every_min, t.checkpoint_every) == (5.0, 7)  # whichever comes first
    from pw_ray.config import dump_config
    import yaml

    again = parse_config(yaml.safe_load(dump_config(parse_config(_with(train={**train, "checkpoint_every": 7})))))
    assert (again.train.checkpoint_every_min, again.train.checkpoint_every) == (None, 7)


@pytest.mark.parametrize("train, message", [
    ({"checkpoint_every_min": None}, "train: no checkpoint interval: set train.checkpoint_every_min"),
    ({"checkpoint_every_min": 0.001}, "train: train.checkpoint_every_min 0.001 is under a second"),
    ({"checkpoint_every_min": -5}, "train.checkpoint_every_min: Input should be greater than 0"),
    ({"checkpoint_every": 0}, "train.checkpoint_every: Input should be greater than 0"),
    ({"keep_checkpoints": 0}, "train.keep_checkpoints: Input should be greater than 0"),
])
def test_nonsense_checkpoint_intervals_name_the_field(train, message):
    base = {k: v for k, v in TINY_CONFIG["train"].items() if k != "checkpoint_every"}
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_config(_with(train={**base, **train}))


def _without_tasks(**changes):
    data = {k: v for k, v in TINY_CONFIG.items() if k != "tasks"}
    return parse_config(dict(data, root="/tmp/x", **changes))


def test_scoring_warnings_say_a_config_without_tasks_scores_nothing():
    from pw_ray.config import scoring_warnings

    (warning,) = scoring_warnings(_without_tasks())
    assert warning.startswith("no tasks:") and "diversity measures only" in warning


def test_scoring_warnings_name_empty_methods_and_tasks_below_min_subset():
    from pw_ray.config import scoring_warnings

    assert "evaluation.methods empty" in scoring_warnings(
        parse_config(dict(TINY_CONFIG, root="/tmp/x", evaluation={"methods": []})))[0]
    small = [{"name": "lc", "kind": "synthetic-landcover", "size": 8}]
    warnings = scoring_warnings(_without_tasks(tasks=small, evaluation={"min_subset": 10}))
    assert warnings[0].startswith("tasks lc: size 8 is below evaluation.min_subset=10")
    assert "no cell can be scored" in warnings[1]
    assert scoring_warnings(parse_config(dict(TINY_CONFIG, root="/tmp/x"))) == []


def test_bands_l2a_lacks_are_refused_with_the_allowed_list():
    with pytest.raises(ConfigError) as e:
        parse_config(_with(chips={"bands": ["B02", "B03", "B10", "B11"]}))
    msg = str(e.value)
    assert "chips.bands" in msg and "'B10'" in msg
    assert "allowed: B01, B02, B03, B04, B05, B06, B07, B08, B8A, B09, B11, B12" in msg


def test_layer_decay_is_an_evaluation_option():
    assert parse_config(_with()).evaluation.layer_decay is None
    assert parse_config(_with(evaluation={"layer_decay": 0.75})).evaluation.layer_decay == 0.75
    with pytest.raises(ConfigError, match=r"evaluation\.layer_decay: Input should be less than or equal to 1"):
        parse_config(_with(evaluation={"layer_decay": 1.5}))


def test_train_fraction_and_seeds_are_checked():
    assert parse_config(_with()).evaluation.train_fraction == 1.0
    with pytest.raises(ConfigError, match=r"evaluation\.train_fraction"):
        parse_config(_with(evaluation={"train_fraction": 0}))
    with pytest.raises(ConfigError, match=r"evaluation\.seeds"):
        parse_config(_with(evaluation={"seeds": []}))


def test_a_dumped_config_loads_again():
    """dump_config names every field with its default (config.yaml under the root, estimate's flags)."""
    import yaml

    from pw_ray.config import dump_config

    for path in ("configs/paper.yaml", "configs/demo.yaml"):
        from pathlib import Path

        cfg = load_config(Path(__file__).parents[1] / path, check_root=False)
        assert parse_config(yaml.safe_load(dump_config(cfg))) == cfg, path
