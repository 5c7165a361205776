"""metanet_utils.metadata: each rule of the paper's encoding, pinned on the real HAM10000 metadata against an
independent computation (numpy / pandas, column by column), and its bad inputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from metanet_utils import metadata as md

#: The vocabularies written out here rather than taken from the kit: the paper's 2 sexes and 14 sites.
SEXES = ["female", "male"]
SITES = ["abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand", "lower extremity", "neck",
         "scalp", "trunk", "upper extremity"]


@pytest.fixture(scope="module")
def meta(real_data_dir) -> pd.DataFrame:
    return pd.read_csv(real_data_dir / "HAM10000_metadata.csv")


@pytest.fixture(scope="module")
def encoded(meta):
    return md.encode(meta)


def _toy() -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": ["a", "b", "c", "d"],
        "age": [20.0, np.nan, 60.0, 40.0],
        "sex": [" Male", "unknown", "female", "male"],
        "localization": ["back", "FACE", np.nan, "back "],
    })


def _encode_by_hand(rows: pd.DataFrame, fit: pd.DataFrame) -> np.ndarray:
    """The paper's 17 columns for ``rows`` with fill and scale values counted on ``fit`` (numpy / pandas only)."""
    known_age = fit["age"].dropna().to_numpy(dtype=np.float64)
    mean, lo, hi = known_age.mean(), known_age.min(), known_age.max()
    age = rows["age"].to_numpy(dtype=np.float64)
    age = (np.where(np.isnan(age), mean, age) - lo) / (hi - lo)
    cols = [age.astype(np.float32)[:, None]]
    for field, vocab in (("sex", SEXES), ("localization", SITES)):
        counts = fit[field][fit[field] != "unknown"].value_counts()
        assert (counts == counts.max()).sum() == 1  # no tie to break
        v = rows[field].where(rows[field] != "unknown", counts.idxmax()).to_numpy()
        cols.append(np.stack([(v == s) for s in vocab], axis=1).astype(np.float32))
    return np.concatenate(cols, axis=1)


# --------------------------------------------------------------------------- names and widths


def test_feature_names_come_in_the_fixed_order_whatever_the_order_asked():
    names = md.feature_names()
    assert names == ["age", "sex=female", "sex=male"] + [f"localization={s}" for s in SITES]
    assert len(names) == 17 == md.meta_dim()
    assert md.feature_names(("localization", "sex", "age")) == names
    assert md.feature_names(("localization", "age", "age")) == ["age"] + names[3:]
    assert md.feature_names(()) == [] and md.meta_dim(None) == 0
    assert md.feature_names("sex") == ["sex=female", "sex=male"]


@pytest.mark.parametrize(
    "features, dim",
    [(("age",), 1), (("sex",), 2), (("localization",), 14),
     (("age", "sex"), 3), (("age", "localization"), 15), (("sex", "localization"), 16),
     (("age", "sex", "localization"), 17), ((), 0)],
)
def test_meta_dim_of_each_table3_subset(features, dim):
    assert md.meta_dim(features) == dim


def test_unknown_feature_name_raises_naming_it():
    with pytest.raises(ValueError, match="bmi"):
        md.feature_names(("age", "bmi"))


# --------------------------------------------------------------------------- the real data


def test_real_file_encodes_to_the_hand_computed_10015_by_17_float32_matrix(meta, encoded):
    x, names = encoded
    assert x.shape == (10015, 17) and x.dtype == np.float32 and names == md.feature_names()
    assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_allclose(x, _encode_by_hand(meta, meta), rtol=0, atol=1e-6)


def test_age_is_mean_filled_then_min_max_scaled_on_real_data(meta, encoded):
    x, _ = encoded
    age = meta["age"].to_numpy(dtype=float)
    known = age[~np.isnan(age)]
    assert np.isnan(age).sum() == 57
    mean = known.sum() / known.size
    assert mean == pytest.approx(51.8638, abs=1e-3)
    np.testing.assert_allclose(x[:, 0], (np.where(np.isnan(age), mean, age) - 0.0) / 85.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(x[np.isnan(age), 0], mean / 85.0, atol=1e-6)  # the 57 missing ages: the scaled mean
    assert (x[age == 0, 0] == 0).all() and (age == 0).sum() == 39  # age 0 is a real value, not a missing one
    assert (x[age == 85, 0] == 1).all()


def test_sex_and_site_are_one_hot_with_unknowns_filled_by_the_mode(meta, encoded):
    x, names = encoded
    sex, site = x[:, 1:3], x[:, 3:]
    assert set(np.unique(x[:, 1:])) == {0.0, 1.0}
    np.testing.assert_array_equal(sex.sum(axis=1), 1)
    np.testing.assert_array_equal(site.sum(axis=1), 1)
    unknown_sex = (meta["sex"] == "unknown").to_numpy()
    unknown_site = (meta["localization"] == "unknown").to_numpy()
    assert unknown_sex.sum() == 57 and unknown_site.sum() == 234
    for j, s in enumerate(SEXES):
        np.testing.assert_array_equal(sex[~unknown_sex, j], (meta["sex"][~unknown_sex] == s).to_numpy())
    for j, s in enumerate(SITES):
        np.testing.assert_array_equal(site[~unknown_site, j], (meta["localization"][~unknown_site] == s).to_numpy())
    # unknowns go to the most frequent known value: male and back
    assert (sex[unknown_sex, names.index("sex=male") - 1] == 1).all()
    assert (site[unknown_site, names.index("localization=back") - 3] == 1).all()
    assert sex.sum(axis=0).tolist() == [4552, 5406 + 57]
    assert site[:, SITES.index("back")].sum() == 2192 + 234


def test_fit_stats_on_real_data_are_known_age_mean_range_and_modes(meta):
    st = md.fit_stats(meta)
    assert st.age_mean == pytest.approx(51.8638, abs=1e-3)
    assert (st.age_min, st.age_max, st.sex_mode, st.site_mode) == (0.0, 85.0, "male", "back")
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.age_mean = 0.0  # type: ignore[misc]
    assert md.fit_stats(meta, ("sex",)) == md.MetadataStats(None, None, None, "male", None)


def test_training_fold_statistics_fill_and_scale_the_validation_fold(meta):
    """encode(validation, stats=fit_stats(training)) on real rows equals the hand encoding with the mean age,
    age range and modal sex / site counted on the training rows only, and differs from the whole file's."""
    sub = meta.sample(4000, random_state=7).reset_index(drop=True)
    rng = np.random.default_rng(0)
    val = (sub["age"] >= 80).to_numpy() | (rng.random(len(sub)) < 0.25)  # every old patient in validation
    train, valid = sub[~val], sub[val]
    assert train["age"].max() < sub["age"].max()  # the training fold's range differs
    assert valid["age"].isna().any() and (valid["sex"] == "unknown").any() and (valid["localization"] == "unknown").any()
    x, _ = md.encode(valid, stats=md.fit_stats(train))
    np.testing.assert_allclose(x, _encode_by_hand(valid, train), rtol=0, atol=1e-6)
    assert x[:, 0].max() > 1  # ages above the training range are not clipped
    assert not np.allclose(x[:, 0], _encode_by_hand(valid, sub)[:, 0])


@pytest.mark.parametrize(
    "features",
    [("age",), ("sex",), ("localization",), ("sex", "age"), ("localization", "age"), ("localization", "sex")],
)
def test_subsets_are_column_selections_of_the_full_vector(meta, encoded, features):
    full, names = encoded
    x, sub_names = md.encode(meta, features)
    cols = [names.index(n) for n in sub_names]
    assert cols == sorted(cols) and x.shape == (10015, len(cols))
    np.testing.assert_array_equal(x, full[:, cols])


def test_no_features_encode_to_an_n_by_0_float32_matrix(meta):
    x, names = md.encode(meta, ())
    assert x.shape == (10015, 0) and x.dtype == np.float32 and names == []


# --------------------------------------------------------------------------- rules on toy data, bad inputs


def test_toy_values_are_stripped_lowercased_filled_and_scaled():
    x, _ = md.encode(_toy())
    np.testing.assert_allclose(x[:, 0], [0.0, 0.5, 1.0, 0.5])  # ages 20, (40 = mean), 60, 40 over 20..60
    np.testing.assert_array_equal(x[:, 1:3], [[0, 1], [0, 1], [1, 0], [0, 1]])  # ' Male' is male; unknown: male
    site = x[:, 3:]
    back, face = SITES.index("back"), SITES.index("face")
    assert site[0, back] == site[3, back] == site[1, face] == 1
    assert site[2, back] == 1  # NaN -> most frequent (back)


def test_stats_fitted_on_one_frame_fill_and_scale_another_without_clipping():
    st = md.fit_stats(_toy())
    other = pd.DataFrame({"image_id": ["z"], "age": [np.nan], "sex": ["unknown"], "localization": ["unknown"]})
    x, _ = md.encode(other, stats=st)
    assert x[0, 0] == pytest.approx(0.5) and x[0, 2] == 1 and x[0, 3 + SITES.index("back")] == 1
    y, _ = md.encode(pd.DataFrame({"age": [80.0]}), ("age",), stats=st)
    assert y[0, 0] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="'elbow' for localization"):
        md.encode(other, stats=dataclasses.replace(st, site_mode="elbow"))


def test_mode_tie_goes_to_vocabulary_order():
    assert md.fit_stats(pd.DataFrame({"sex": ["male", "female", "unknown"]})).sex_mode == "female"


def test_unknown_value_raises_naming_the_row_the_value_and_the_allowed_ones():
    df = _toy()
    df.loc[2, "localization"] = "elbow"
    with pytest.raises(ValueError) as ei:
        md.encode(df)
    assert "'c'" in str(ei.value) and "elbow" in str(ei.value) and "upper extremity" in str(ei.value)
    df = _toy()
    df.loc[1, "sex"] = "x"
    with pytest.raises(ValueError, match=r"'x'.*'b'.*female"):
        md.encode(df, ("sex",))


def test_bad_ages_and_missing_columns_raise_and_subsets_need_only_their_columns():
    df = _toy()
    df["age"] = df["age"].astype(object)
    df.loc[0, "age"] = "old"
    with pytest.raises(ValueError, match="non-numeric age 'old' at image_id='a'"):
        md.encode(df, ("age",))
    with pytest.raises(ValueError, match="negative age -5.0 at image_id='c'"):
        md.encode(_toy().assign(age=[20.0, np.nan, -5.0, 40.0]), ("age",))
    with pytest.raises(KeyError, match="localization"):
        md.encode(_toy().drop(columns="localization"))
    assert md.encode(_toy().drop(columns="localization"), ("age", "sex"))[0].shape == (4, 3)


def test_a_field_with_no_known_value_cannot_be_filled():
    with pytest.raises(ValueError, match="no image has a known sex"):
        md.encode(pd.DataFrame({"sex": ["unknown", np.nan]}), ("sex",))
    with pytest.raises(ValueError, match="no image has a known age"):
        md.encode(pd.DataFrame({"age": [np.nan, "unknown"]}), ("age",))
