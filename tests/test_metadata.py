"""metanet_utils.metadata: each rule of the paper's encoding, pinned on the real HAM10000 metadata
against an independent computation, plus the metadata-only baseline and mutual information."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from _frames import tinted_frame

from metanet_utils import metadata as md
from metanet_utils.constants import CLASS_CODES, DX_TO_INDEX, SEXES, SITES
from metanet_utils.splits import make_folds


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


# --------------------------------------------------------------------------- names and widths


def test_feature_names_fixed_order():
    names = md.feature_names()
    assert names[:4] == ["age", "sex=female", "sex=male", "localization=abdomen"]
    assert names[3:] == [f"localization={s}" for s in SITES]
    assert len(names) == 17 == md.meta_dim()
    assert list(SITES) == sorted(SITES) and len(SITES) == 14
    # any order in, the same fixed order out
    assert md.feature_names(("localization", "sex", "age")) == names
    assert md.feature_names(("localization", "age")) == ["age"] + names[3:]
    assert md.feature_names(()) == [] and md.meta_dim(None) == 0
    assert md.feature_names("sex") == ["sex=female", "sex=male"]


@pytest.mark.parametrize(
    "features, dim",
    [(("age",), 1), (("sex",), 2), (("localization",), 14),
     (("age", "sex"), 3), (("age", "localization"), 15), (("sex", "localization"), 16),
     (("age", "sex", "localization"), 17), ((), 0)],
)
def test_meta_dim_of_each_feature_subset(features, dim):
    assert md.meta_dim(features) == dim


def test_unknown_feature_name_raises_naming_it():
    with pytest.raises(ValueError, match="bmi"):
        md.feature_names(("age", "bmi"))


# --------------------------------------------------------------------------- the real data


def test_real_file_encodes_to_10015_by_17_float32_in_the_unit_interval(meta, encoded):
    x, names = encoded
    assert x.shape == (10015, 17)
    assert x.dtype == np.float32
    assert names == md.feature_names()
    assert np.isfinite(x).all()
    assert x.min() >= 0.0 and x.max() <= 1.0


def test_age_is_mean_filled_then_min_max_scaled_on_real_data(meta, encoded):
    x, _ = encoded
    age = meta["age"].to_numpy(dtype=float)
    known = age[~np.isnan(age)]
    assert np.isnan(age).sum() == 57
    mean = known.sum() / known.size
    assert mean == pytest.approx(51.8638, abs=1e-3)
    filled = np.where(np.isnan(age), mean, age)
    expected = (filled - known.min()) / (known.max() - known.min())
    np.testing.assert_allclose(x[:, 0], expected, rtol=0, atol=1e-6)
    # the 57 missing ages all sit at the scaled mean
    np.testing.assert_allclose(x[np.isnan(age), 0], mean / 85.0, atol=1e-6)
    # age 0 is a real value (39 images), mapped to 0, not treated as missing
    assert (x[age == 0, 0] == 0).all() and (age == 0).sum() == 39
    assert (x[age == 85, 0] == 1).all()


def test_sex_and_site_are_one_hot_with_unknowns_filled_by_the_mode(meta, encoded):
    x, names = encoded
    sex = x[:, 1:3]
    site = x[:, 3:]
    assert set(np.unique(sex)) <= {0.0, 1.0} and set(np.unique(site)) <= {0.0, 1.0}
    np.testing.assert_array_equal(sex.sum(axis=1), 1)
    np.testing.assert_array_equal(site.sum(axis=1), 1)
    # independent one-hot of the known values
    unknown_sex = (meta["sex"] == "unknown").to_numpy()
    unknown_site = (meta["localization"] == "unknown").to_numpy()
    assert unknown_sex.sum() == 57 and unknown_site.sum() == 234
    for j, s in enumerate(SEXES):
        np.testing.assert_array_equal(sex[~unknown_sex, j], (meta["sex"][~unknown_sex] == s).to_numpy())
    for j, s in enumerate(SITES):
        np.testing.assert_array_equal(site[~unknown_site, j], (meta["localization"][~unknown_site] == s).to_numpy())
    # unknowns go to the most frequent known value: male and back
    assert meta["sex"][~unknown_sex].value_counts().idxmax() == "male"
    assert meta["localization"][~unknown_site].value_counts().idxmax() == "back"
    assert (sex[unknown_sex, names.index("sex=male") - 1] == 1).all()
    assert (site[unknown_site, names.index("localization=back") - 3] == 1).all()
    # column totals
    assert sex.sum(axis=0).tolist() == [4552, 5406 + 57]
    assert site[:, SITES.index("back")].sum() == 2192 + 234


def test_fit_stats_on_real_data_are_known_age_mean_range_and_modes(meta):
    st = md.fit_stats(meta)
    assert st.age_mean == pytest.approx(51.8638, abs=1e-3)
    assert (st.age_min, st.age_max, st.sex_mode, st.site_mode) == (0.0, 85.0, "male", "back")
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.age_mean = 0.0  # type: ignore[misc]
    assert md.MetadataStats.from_dict(st.as_dict()) == st


@pytest.mark.parametrize(
    "features, dim",
    [(("age",), 1), (("sex",), 2), (("localization",), 14),
     (("sex", "age"), 3), (("localization", "age"), 15), (("localization", "sex"), 16)],
)
def test_subsets_are_column_selections(meta, encoded, features, dim):
    full, names = encoded
    x, sub_names = md.encode(meta, features)
    assert x.shape == (10015, dim)
    cols = [names.index(n) for n in sub_names]
    assert cols == sorted(cols)
    np.testing.assert_array_equal(x, full[:, cols])


def test_no_features_encode_to_an_n_by_0_float32_matrix(meta):
    x, names = md.encode(meta, ())
    assert x.shape == (10015, 0) and x.dtype == np.float32 and names == []


# --------------------------------------------------------------------------- rules on toy data


def test_toy_values_are_stripped_lowercased_filled_and_scaled():
    x, names = md.encode(_toy())
    # ages 20, (40 = mean), 60, 40 over range 20..60
    np.testing.assert_allclose(x[:, 0], [0.0, 0.5, 1.0, 0.5])
    # ' Male' and 'male' are male; 'unknown' -> most frequent (male 2 vs female 1)
    np.testing.assert_array_equal(x[:, 1:3], [[0, 1], [0, 1], [1, 0], [0, 1]])
    site = x[:, 3:]
    back, face = SITES.index("back"), SITES.index("face")
    assert site[0, back] == site[3, back] == 1 and site[1, face] == 1
    assert site[2, back] == 1  # NaN -> most frequent (back)


def test_stats_fitted_on_one_frame_fill_and_scale_another_without_clipping():
    train = _toy()
    other = pd.DataFrame({"image_id": ["z"], "age": [np.nan], "sex": ["unknown"], "localization": ["unknown"]})
    st = md.fit_stats(train)
    x, _ = md.encode(other, stats=st)
    assert x[0, 0] == pytest.approx(0.5)
    assert x[0, 2] == 1 and x[0, 3 + SITES.index("back")] == 1
    # out-of-range ages are not clipped
    y, _ = md.encode(pd.DataFrame({"age": [80.0]}), ("age",), stats=st)
    assert y[0, 0] == pytest.approx(1.5)


def test_mode_tie_goes_to_vocabulary_order():
    df = pd.DataFrame({"sex": ["male", "female", "unknown"]})
    assert md.fit_stats(df).sex_mode == "female"


def test_unknown_value_raises_with_context():
    df = _toy()
    df.loc[2, "localization"] = "elbow"
    with pytest.raises(ValueError) as ei:
        md.encode(df)
    msg = str(ei.value)
    assert "'c'" in msg and "elbow" in msg and "upper extremity" in msg
    df = _toy()
    df.loc[1, "sex"] = "x"
    with pytest.raises(ValueError, match=r"'x'.*'b'.*female"):
        md.encode(df, ("sex",))


def test_non_numeric_age_and_missing_column_raise_and_subsets_need_only_their_columns():
    df = _toy()
    df["age"] = df["age"].astype(object)
    df.loc[0, "age"] = "old"
    with pytest.raises(ValueError, match="old"):
        md.encode(df, ("age",))
    with pytest.raises(KeyError, match="localization"):
        md.encode(_toy().drop(columns="localization"))
    # a subset needs only its own columns
    assert md.encode(_toy().drop(columns="localization"), ("age", "sex"))[0].shape == (4, 3)


def test_a_field_with_no_known_value_cannot_be_filled():
    df = pd.DataFrame({"sex": ["unknown", np.nan]})
    with pytest.raises(ValueError, match="no image has a known sex"):
        md.encode(df, ("sex",))


# --------------------------------------------------------------------------- baseline


def test_metadata_baseline_on_real_data_equals_sklearn_logistic_regression_fold_2(meta):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, recall_score
    from threadpoolctl import threadpool_limits

    folds = np.arange(len(meta)) % 5
    res = md.metadata_baseline(meta, folds)
    assert len(res["mcr"]) == 5 and res["folds"] == [0, 1, 2, 3, 4]
    assert set(res["recall"][0]) == set(CLASS_CODES)
    # beats chance (1/7 = 0.143) clearly
    assert res["mcr_mean"] > 0.25
    assert all(m > 0.2 for m in res["mcr"])
    assert res["mcr_mean"] == pytest.approx(np.mean(res["mcr"]))
    assert res["mcr_std"] == pytest.approx(np.std(res["mcr"], ddof=1))
    # recompute fold 2 independently: encode on the whole data, fit, balanced accuracy
    y = meta["dx"].map(DX_TO_INDEX).to_numpy()
    x, _ = md.encode(meta)
    tr, va = folds != 2, folds == 2
    with threadpool_limits(limits=1):
        clf = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit(x[tr], y[tr])
    pred = clf.predict(x[va])
    assert res["mcr"][2] == pytest.approx(balanced_accuracy_score(y[va], pred), abs=1e-12)
    rec = recall_score(y[va], pred, labels=list(range(7)), average=None)
    for c, r in zip(CLASS_CODES, rec):
        assert res["recall"][2][c] == pytest.approx(r)
    print(f"\nmetadata-only logistic regression MCR {res['mcr_mean']:.3f} +- {res['mcr_std']:.3f}")


def test_metadata_baseline_on_age_alone_beats_chance_and_marks_absent_classes_nan():
    rng = np.random.default_rng(0)
    n = 300
    dx = rng.choice(["nv", "mel", "bkl"], n)
    df = pd.DataFrame({
        "age": np.where(dx == "mel", 70.0, 30.0) + rng.integers(-2, 3, n) * 5,
        "sex": rng.choice(["male", "female"], n),
        "localization": rng.choice(list(SITES), n),
        "dx": dx,
    })
    folds = np.arange(n) % 3
    a = md.metadata_baseline(df, folds, features=("age",))
    b = md.metadata_baseline(df, folds, features=("age",), fit_stats_on="train")
    assert a["feature_names"] == ["age"]
    assert a["mcr_mean"] > 0.5 and b["mcr_mean"] > 0.5
    assert math.isnan(a["recall"][0]["DF"])  # absent class
    with pytest.raises(ValueError):
        md.metadata_baseline(df, folds, features=())
    with pytest.raises(ValueError, match="shape"):
        md.metadata_baseline(df, folds[:-1])


def _encode_by_hand(rows: pd.DataFrame, fit: pd.DataFrame) -> np.ndarray:
    """The paper's 17 columns for ``rows`` with fill and scale values counted on ``fit`` (numpy / pandas only)."""
    known_age = fit["age"].dropna().to_numpy(dtype=np.float64)
    mean, lo, hi = known_age.mean(), known_age.min(), known_age.max()
    age = rows["age"].to_numpy(dtype=np.float64)
    age = (np.where(np.isnan(age), mean, age) - lo) / (hi - lo)
    cols = [age.astype(np.float32)[:, None]]
    for field, vocab in (("sex", SEXES), ("localization", SITES)):
        known = fit[field][fit[field] != "unknown"]
        counts = known.value_counts()
        assert (counts == counts.max()).sum() == 1  # no tie to break
        v = rows[field].where(rows[field] != "unknown", counts.idxmax()).to_numpy()
        cols.append(np.stack([(v == s) for s in vocab], axis=1).astype(np.float32))
    return np.concatenate(cols, axis=1)


def test_metadata_baseline_with_train_stats_equals_an_independent_fold_with_training_fill_values(meta):
    """fit_stats_on="train" on the real file: fold 0's numbers equal a logistic regression on features whose
    mean age, age range and modal sex / site are counted on fold 0's training rows only and applied to its
    validation rows (encoded here by hand), and these features are not those of the whole file."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, recall_score
    from threadpoolctl import threadpool_limits

    sub = meta.sample(4000, random_state=7).reset_index(drop=True)
    y = sub["dx"].map(DX_TO_INDEX).to_numpy()
    # fold 0 (validation): every image aged 80 or more plus a quarter of the rest, so the training fold's age
    # range and mean are not the whole frame's
    rng = np.random.default_rng(0)
    folds = np.where((sub["age"] >= 80).to_numpy() | (rng.random(len(sub)) < 0.25), 0, 1)
    tr, va = folds != 0, folds == 0
    assert sub.loc[tr, "age"].max() < sub["age"].max()  # the training fold's range differs
    assert (sub.loc[va, "age"].isna().any() and (sub.loc[va, "sex"] == "unknown").any()
            and (sub.loc[va, "localization"] == "unknown").any())  # every fill rule is exercised on validation
    res = md.metadata_baseline(sub, folds, fit_stats_on="train")
    x_tr, x_va = _encode_by_hand(sub[tr], sub[tr]), _encode_by_hand(sub[va], sub[tr])
    x_all_va = _encode_by_hand(sub[va], sub)
    assert not np.allclose(x_va[:, 0], x_all_va[:, 0])  # statistics of the whole frame would be different features
    with threadpool_limits(limits=1):
        clf = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit(x_tr, y[tr])
    pred = clf.predict(x_va)
    assert (res["folds"][0], res["n_train"][0], res["n_val"][0]) == (0, int(tr.sum()), int(va.sum()))
    assert res["mcr"][0] == pytest.approx(balanced_accuracy_score(y[va], pred), abs=1e-12)
    present = np.unique(y[va])
    for c, r in zip(present, recall_score(y[va], pred, labels=present, average=None)):
        assert res["recall"][0][CLASS_CODES[c]] == pytest.approx(r, abs=1e-12)
    np.testing.assert_array_equal(np.array(res["confusion"][0]), confusion_matrix(y[va], pred, labels=range(7)))


# --------------------------------------------------------------------------- mutual information


def test_mutual_information_against_sklearn(meta):
    from sklearn.metrics import mutual_info_score

    mi = md.mutual_information(meta)
    assert list(mi.index) == ["age", "sex", "localization"]
    age_bins = np.floor(meta["age"] / 5).fillna(-1)
    for name, col in [("age", age_bins), ("sex", meta["sex"]), ("localization", meta["localization"])]:
        ref = mutual_info_score(meta["dx"], col) / math.log(2)
        assert mi[name] == pytest.approx(ref, rel=1e-9), name
    assert (mi > 0).all() and mi["sex"] < mi["localization"] < mi["age"]
    # 'drop' leaves missing rows out
    drop = md.mutual_information(meta, missing="drop")
    known = meta["sex"] != "unknown"
    assert drop["sex"] == pytest.approx(mutual_info_score(meta["dx"][known], meta["sex"][known]) / math.log(2))
    print("\nmutual information with dx (bits):", mi.round(4).to_dict())


def test_mutual_information_is_one_bit_for_a_copy_and_zero_for_a_constant():
    df = pd.DataFrame({"dx": ["nv", "nv", "mel", "mel"], "sex": ["male", "male", "female", "female"],
                       "localization": ["back"] * 4})
    mi = md.mutual_information(df)
    assert mi["sex"] == pytest.approx(1.0) and mi["localization"] == pytest.approx(0.0)
    with pytest.raises(ValueError):
        md.mutual_information(df, missing="nope")


def _miller_madow(field: pd.Series, dx: pd.Series) -> float:
    """The bias term from pandas' contingency table: (rows - 1)(columns - 1) / (2 N ln 2)."""
    table = pd.crosstab(field, dx)
    return (table.shape[0] - 1) * (table.shape[1] - 1) / (2 * int(table.to_numpy().sum()) * math.log(2))


def test_mutual_information_bias_against_an_independent_computation(meta):
    sub = meta.sample(400, random_state=1)
    for frame in (meta, sub):
        bias = md.mutual_information_bias(frame)
        table = md.mutual_information_table(frame)
        assert list(bias.index) == list(table.index) == ["age", "sex", "localization"]
        age_bins = np.floor(frame["age"] / 5).fillna(-1)
        for name, col in [("age", age_bins), ("sex", frame["sex"]), ("localization", frame["localization"])]:
            assert bias[name] == pytest.approx(_miller_madow(col, frame["dx"]), rel=1e-12), name
            row = table.loc[name]
            assert row["bias_bits"] == pytest.approx(bias[name]) and row["n"] == len(frame)
            assert row["mi_bits"] == pytest.approx(md.mutual_information(frame)[name])
            assert row["mi_corrected_bits"] == pytest.approx(max(row["mi_bits"] - row["bias_bits"], 0.0))
            assert row["values"] == col.nunique() and row["classes"] == frame["dx"].nunique()
        counts = frame["dx"].value_counts().to_numpy()
        assert table.attrs["h_dx"] == pytest.approx(-(counts / counts.sum() * np.log2(counts / counts.sum())).sum())
    # on the full file the bias is tiny; 400 images multiply it by 25
    full, small = md.mutual_information_bias(meta), md.mutual_information_bias(sub)
    assert (full < 0.01).all() and small["localization"] > 0.05
    # 'drop' counts only the rows with a known value
    known = meta["sex"] != "unknown"
    assert md.mutual_information_bias(meta, missing="drop")["sex"] == pytest.approx(
        _miller_madow(meta["sex"][known], meta["dx"][known]))


def test_mutual_information_bias_is_what_independent_fields_show():
    """Where the field tells nothing, the plug-in MI averages the bias term (to first order)."""
    rng = np.random.default_rng(0)
    dx = np.array(["nv", "mel", "bkl", "bcc", "akiec", "vasc", "df"])
    sites = np.array(["back", "face", "trunk", "scalp", "neck"])
    n, mis, biases = 400, [], []
    for _ in range(300):
        df = pd.DataFrame({"dx": rng.choice(dx, n), "localization": rng.choice(sites, n)})
        mis.append(md.mutual_information(df)["localization"])
        biases.append(md.mutual_information_bias(df)["localization"])
    expected = (5 - 1) * (7 - 1) / (2 * n * math.log(2))
    assert np.mean(biases) == pytest.approx(expected, rel=1e-9)
    assert np.mean(mis) == pytest.approx(expected, rel=0.1)
    df = pd.DataFrame({"dx": rng.choice(dx, n), "localization": rng.choice(sites, n)})
    assert md.mutual_information_table(df).loc["localization", "mi_corrected_bits"] < 0.02


def test_describe_mi_bias_prints_each_field_minus_its_bias_and_the_ratios(meta):
    tables = {"whole file": md.mutual_information_table(meta),
              "subsample": md.mutual_information_table(meta.sample(300, random_state=0))}
    text = md.describe_mi_bias(tables)
    lines = text.splitlines()
    assert lines[0].startswith("Plug-in MI minus its small-sample bias")
    assert lines[1].startswith(f"  whole file ({len(meta)} images, H(dx) = ")
    assert lines[2].startswith("  subsample (300 images")
    loc = tables["subsample"].loc["localization"]
    assert f"localization {loc.mi_bits:.3f} - {loc.bias_bits:.3f} = {loc.mi_corrected_bits:.3f}" in text
    assert "subsample against whole file: age " in text and "x corrected" in text
    assert "fewer than 5 images per cell" in text  # 300 images over 19 x 7 age bins


# --------------------------------------------------------------------------- the tables of notebook 02


@pytest.fixture(scope="module")
def frame(tmp_path_factory) -> pd.DataFrame:
    """4 images of each class (2 lesions of 2 images), one missing age, one unknown sex, one unknown site."""
    return tinted_frame(tmp_path_factory.mktemp("imgs"))


def test_example_rows_put_the_missing_values_first(frame):
    rows = md.example_rows(frame)
    assert len(rows) == 3
    assert rows["age"].isna().iloc[0] and rows["sex"].iloc[1] == "unknown" and rows["localization"].iloc[2] == "unknown"


def test_notebook_tables_fill_with_the_stats_and_count_one_missing_per_field(frame):
    stats = md.fit_stats(frame)
    rows = md.example_rows(frame)
    steps = md.fill_steps(rows, stats)
    assert steps["age filled"].iloc[0] == pytest.approx(stats.age_mean)
    assert steps["sex filled"].iloc[1] == stats.sex_mode
    assert steps["localization filled"].iloc[2] == stats.site_mode
    assert 0 <= steps["age scaled"].min() and steps["age scaled"].max() <= 1
    t = md.missing_table(frame, stats)
    assert t["missing"].tolist() == [1, 1, 1]
    res = md.metadata_baseline(frame, make_folds(frame, 2, "image"))
    s = md.baseline_summary({"all": res})
    assert list(s.columns)[:2] == ["MCR", "NV"] and "±" in s.loc["all", "MCR"]


def test_fill_steps_and_missing_table_on_real_data_equal_hand_computations(meta):
    """On the real file: fill_steps' scaled age is (filled - min) / (max - min) over the known ages, the filled
    values are the known mean age and the most frequent known sex / site, and missing_table's counts (and
    percentages) are the NaN ages and 'unknown' sexes and sites counted by hand."""
    known = meta["age"].dropna().to_numpy(dtype=np.float64)
    mean, lo, hi = known.mean(), known.min(), known.max()
    sex_mode = meta["sex"][meta["sex"] != "unknown"].value_counts().idxmax()
    site_mode = meta["localization"][meta["localization"] != "unknown"].value_counts().idxmax()
    stats = md.fit_stats(meta)
    rows = pd.concat([md.example_rows(meta), meta.sample(50, random_state=3)])
    steps = md.fill_steps(rows, stats)
    filled = rows["age"].fillna(mean).to_numpy()
    np.testing.assert_allclose(steps["age filled"].to_numpy(), filled, rtol=1e-12)
    np.testing.assert_allclose(steps["age scaled"].to_numpy(), (filled - lo) / (hi - lo), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(steps["sex filled"].to_numpy(),
                                  rows["sex"].where(rows["sex"] != "unknown", sex_mode).to_numpy())
    np.testing.assert_array_equal(
        steps["localization filled"].to_numpy(),
        rows["localization"].where(rows["localization"] != "unknown", site_mode).to_numpy())
    assert list(steps.index) == rows["image_id"].tolist()
    t = md.missing_table(meta, stats)
    hand = {"age": int(meta["age"].isna().sum()), "sex": int((meta["sex"] == "unknown").sum()),
            "localization": int((meta["localization"] == "unknown").sum())}
    assert hand == {"age": 57, "sex": 57, "localization": 234}
    assert t["missing"].to_dict() == hand
    for f, n in hand.items():
        assert t.loc[f, "% of images"] == pytest.approx(round(100 * n / len(meta), 2))
    assert t.loc["age", "filled with"] == f"mean known age {mean:.2f} (scaled {(mean - lo) / (hi - lo):.3f})"
    assert t.loc["sex", "filled with"].endswith(sex_mode) and t.loc["localization", "filled with"].endswith(site_mode)
