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
