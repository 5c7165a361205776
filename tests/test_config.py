"""Profiles and run configs: YAML mirrors the dataclass, bad values are refused in one line."""

from __future__ import annotations

import pytest

from metanet_utils.config import ConfigError, Profile, RunConfig, list_profiles, load_profile
from metanet_utils.constants import META_FIELDS


def test_the_four_profiles_load_and_follow_the_design():
    assert {"smoke", "demo", "quick", "paper"} <= set(list_profiles())
    paper = load_profile("paper")
    assert (paper.epochs, paper.milestones, paper.batch_size, paper.lr, paper.momentum, paper.weight_decay) == \
        (250, (50, 120, 200), 32, 1e-3, 0.9, 1e-4)
    assert paper.n_folds == 5 and paper.pretrained and paper.data == "real"
    assert len(paper.backbones) == 6
    smoke = load_profile("smoke")
    assert (smoke.n_folds, smoke.epochs, smoke.pretrained) == (2, 1, False)


def test_unknown_profile_key_lists_the_allowed_ones(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("name: mine\nepocs: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['epocs'\].*allowed:.*epochs"):
        load_profile(p)


def test_unknown_profile_name_lists_the_profiles():
    with pytest.raises(ConfigError, match="allowed: .*demo.*smoke"):
        load_profile("nope")


@pytest.mark.parametrize("kwargs, message", [
    ({"fusion": "sum"}, "fusion='sum' is not allowed; choose one of: none, concat, metanet"),
    ({"fold": 5}, "fold=5 is out of range; allowed: 0..4"),
    ({"crop_size": 320}, "crop_size=320 is larger than image_size=300"),
    ({"meta_features": ("age", "weight")}, "meta feature 'weight' is unknown"),
    ({"split_scheme": "patient"}, "split_scheme='patient' is not allowed"),
    ({"fusion": "metanet", "meta_layers": 0}, "needs meta_layers >= 1"),
])
def test_bad_run_settings_are_refused_with_what_is_allowed(kwargs, message):
    with pytest.raises(ConfigError) as e:
        RunConfig(backbone="test_resnet", **kwargs)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_run_id_is_a_function_of_every_setting():
    a = RunConfig(backbone="resnet50", fusion="metanet", fold=2)
    assert a.run_id == RunConfig.from_dict(a.to_dict()).run_id
    assert a.run_id != a.replace(lr=0.01).run_id
    assert a.run_id != a.replace(fold=3).run_id
    assert a.run_id.startswith("resnet50-metanet-age+sex+loc-k2-f2-")


def test_meta_layers_left_out_is_the_variants_paper_setting_as_in_build_model():
    """``RunConfig(fusion="concat")`` is Table 1's concatenation of the raw metadata (k = 0), the same depth
    ``build_model`` gives without ``meta_layers``, and the same run as the grid's; MetaNet keeps two layers."""
    from metanet_utils.models import build_model

    depth = {f: RunConfig(backbone="test_resnet", fusion=f, meta_features=() if f == "none" else META_FIELDS)
             .meta_layers for f in ("none", "concat", "metanet", "metablock")}
    assert depth == {"none": 0, "concat": 0, "metanet": 2, "metablock": 1}
    concat = RunConfig(backbone="test_resnet", fusion="concat")
    assert concat.run_id == concat.replace(meta_layers=0).run_id and "-k0-" in concat.run_id
    assert build_model("test_resnet", "concat", pretrained=False).meta_layers == depth["concat"]
    assert RunConfig.from_dict(concat.to_dict()) == concat


def test_profile_yaml_keys_are_exactly_the_dataclass_fields():
    import yaml

    from metanet_utils.paths import configs_dir

    fields = set(Profile.__dataclass_fields__)
    for name in list_profiles():
        raw = yaml.safe_load((configs_dir() / f"{name}.yaml").read_text())
        assert set(raw) <= fields, name


def test_run_ids_of_existing_records_stay_the_same():
    """Ids computed by the kit before `compile` and `class_weighted_loss` were dropped (pinned from that code): the
    same config is the same run, and a record's config.json holding them at their only value reads back to it."""
    pinned = {
        "resnet50-metanet-age+sex+loc-k2-f2-67b0beb5d3": RunConfig(backbone="resnet50", fusion="metanet", fold=2),
        "test_resnet-concat-age+sex-k0-f1-59cf01a39e": RunConfig(
            backbone="test_resnet", fusion="concat", meta_features=("age", "sex"), n_folds=2, fold=1, epochs=3,
            image_size=64, crop_size=56, lr=0.01, pretrained=False, deterministic=True, data_kind="sample",
            data_fingerprint="ham10000-abc123"),
        "timm_vit_small-none-nometa-k0-f0-c53cd695ab": RunConfig(
            backbone="timm/vit.small", fusion="none", meta_features=(), split_scheme="lesion", cuda_graphs="on",
            checkpoint_interval_s=60),
    }
    for run_id, cfg in pinned.items():
        assert cfg.run_id == run_id
        old_record = {**cfg.to_dict(), "compile": False, "class_weighted_loss": True, "run_id": run_id}
        assert RunConfig.from_dict(old_record) == cfg
    with pytest.raises(ConfigError, match="compile=True is no longer a setting"):
        RunConfig.from_dict({**cfg.to_dict(), "compile": True})
    with pytest.raises(ConfigError, match=r"unknown run setting\(s\) \['epoch'\]; allowed: .*epochs"):
        RunConfig.from_dict({**cfg.to_dict(), "epoch": 3})


@pytest.mark.parametrize("key, value, message", [
    ("epochs", "ten", "epochs='ten' is not allowed; it must be a whole number"),
    ("epochs", True, "epochs=True is not allowed; it must be a whole number"),
    ("backbones", "resnet50", "backbones='resnet50' is not allowed; it must be a list, e.g. [resnet50]"),
    ("folds", [0, "a"], "folds=[0, 'a'] is not allowed; it must be a list of whole numbers"),
    ("pretrained", 1, "pretrained=1 is not allowed; it must be true or false"),
    ("lr", "fast", "lr='fast' is not allowed; it must be a number"),
    ("ablations", {"table5": True}, "unknown key(s) ['table5'] in ablations; allowed: backbone, meta_layers,"),
    ("workers", 0, "workers=0 is not allowed; it must be 1 or more"),
])
def test_profile_values_of_the_wrong_type_are_refused_in_one_line(key, value, message):
    with pytest.raises(ConfigError) as e:
        Profile(name="x", **{key: value})
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_yaml_reads_1e_4_as_text_and_on_off_as_booleans_the_profile_takes_what_was_meant(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("weight_decay: 1e-4\ncuda_graphs: on\n")
    prof = load_profile(p)
    assert prof.weight_decay == 1e-4 and prof.cuda_graphs == "on" and prof.name == "mine"
