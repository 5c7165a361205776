"""metanet_utils.splits: stratification, the lesion leak of the image split, saved folds, class weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metanet_utils import splits
from metanet_utils.constants import DX_CODES, DX_TO_INDEX


@pytest.fixture(scope="module")
def meta(real_data_dir) -> pd.DataFrame:
    return pd.read_csv(real_data_dir / "HAM10000_metadata.csv")


@pytest.fixture(scope="module")
def image_folds(meta) -> np.ndarray:
    return splits.make_folds(meta, 5, "image", seed=0)


@pytest.fixture(scope="module")
def lesion_folds(meta) -> np.ndarray:
    return splits.make_folds(meta, 5, "lesion", seed=0)


def _check_stratified(meta: pd.DataFrame, folds: np.ndarray, tol: float) -> None:
    overall = meta["dx"].value_counts(normalize=True)
    for f in range(5):
        val = meta["dx"][folds == f]
        share = val.value_counts(normalize=True)
        assert set(share.index) == set(DX_CODES), f"fold {f} lacks a class"
        for dx in DX_CODES:
            assert abs(share[dx] - overall[dx]) <= tol * overall[dx] + 0.002, (f, dx)


@pytest.mark.parametrize("scheme", ["image", "lesion"])
def test_folds_cover_every_image_in_near_equal_folds_stratified_by_dx(meta, image_folds, lesion_folds, scheme):
    folds = image_folds if scheme == "image" else lesion_folds
    assert folds.shape == (10015,) and folds.dtype == np.int64
    assert set(folds.tolist()) == {0, 1, 2, 3, 4}
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= (1 if scheme == "image" else 30)
    _check_stratified(meta, folds, tol=0.01 if scheme == "image" else 0.05)


def test_image_scheme_is_sklearn_stratified_kfold(meta, image_folds):
    from sklearn.model_selection import StratifiedKFold

    order = np.argsort(meta["image_id"].to_numpy(), kind="stable")
    y = meta["dx"].to_numpy()[order]
    ref = np.empty(len(meta), dtype=np.int64)
    for k, (_, val) in enumerate(StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(len(y)), y)):
        ref[order[val]] = k
    np.testing.assert_array_equal(image_folds, ref)


#: sha256 of the int8 fold of each row of HAM10000_metadata.csv (5 folds), computed by the kit's split before its
#: rewrite on filelock/sklearn: run ids and records depend on these folds, so they must never change.
PINNED_FOLDS = {
    ("image", 0): "7fe8d1a1cde633819c323c5221ee8b622ee659293e6f2f402e1de8562c3f7057",
    ("image", 1): "869871e9dd2b61ab8a16a51d99bfd623b0be7994228f7c6b045e10c482b93cd2",
    ("lesion", 0): "69d4769cbd74b7f8bea4a11921073887fed1bb5e2ae8e9bdca691186fa4aa3c6",
    ("lesion", 1): "89a2ae606554171bb10892e304041e88a1952db1f6b6b0f7ba12804976b46804",
}


def test_folds_of_the_full_data_are_the_ones_existing_records_were_trained_on(meta, image_folds, lesion_folds):
    import hashlib

    for (scheme, seed), digest in PINNED_FOLDS.items():
        folds = {("image", 0): image_folds, ("lesion", 0): lesion_folds}.get((scheme, seed))
        folds = splits.make_folds(meta, 5, scheme, seed) if folds is None else folds
        assert hashlib.sha256(folds.astype(np.int8).tobytes()).hexdigest() == digest, (scheme, seed)
    assert np.bincount(lesion_folds).tolist() == [2004, 2003, 2002, 2003, 2003]


def test_folds_depend_on_the_seed_but_not_on_the_row_order(meta, image_folds, lesion_folds):
    np.testing.assert_array_equal(splits.make_folds(meta, 5, "image", 0), image_folds)
    shuffled = meta.sample(frac=1.0, random_state=1)
    pos = meta.index.get_indexer(shuffled.index)
    np.testing.assert_array_equal(splits.make_folds(shuffled, 5, "image", 0), image_folds[pos])
    np.testing.assert_array_equal(splits.make_folds(shuffled, 5, "lesion", 0), lesion_folds[pos])
    assert not np.array_equal(splits.make_folds(meta, 5, "image", 1), image_folds)


def test_lesion_scheme_has_no_leak(meta, lesion_folds):
    leak = splits.lesion_leak(meta, lesion_folds)
    assert (leak["n_val_with_lesion_in_train"] == 0).all()
    # independent check: every lesion in exactly one fold
    assert meta.assign(fold=lesion_folds).groupby("lesion_id")["fold"].nunique().max() == 1


def test_image_scheme_leaks_like_the_authors_split(meta, image_folds):
    leak = splits.lesion_leak(meta, image_folds)
    assert list(leak.index) == [0, 1, 2, 3, 4, "overall"]
    assert list(leak.columns) == ["n_val", "n_val_with_lesion_in_train", "share"]
    assert leak.loc["overall", "n_val"] == 10015
    # independent count for fold 0
    val = image_folds == 0
    train_lesions = set(meta["lesion_id"][~val])
    n_leak = int(meta["lesion_id"][val].isin(train_lesions).sum())
    assert leak.loc[0, "n_val_with_lesion_in_train"] == n_leak
    assert leak.loc[0, "share"] == pytest.approx(n_leak / val.sum())
    assert leak.loc["overall", "share"] == pytest.approx(
        leak["n_val_with_lesion_in_train"].iloc[:5].sum() / 10015)
    # the paper README: 38-40 % for the authors' image-level split; ours is similar
    shares = leak["share"].iloc[:5]
    assert (shares > 0.33).all() and (shares < 0.45).all()
    assert 0.36 <= leak.loc["overall", "share"] <= 0.42
    print("\nimage-scheme lesion leak per fold:", [round(float(s), 4) for s in leak["share"]])


def test_load_or_make_folds_saves_and_reuses(meta, tmp_path, image_folds):
    d = tmp_path / "folds"
    a = splits.load_or_make_folds(meta, 5, "image", 0, key="ham-test", folds_dir=d)
    path = d / "ham-test-image-5-s0.csv"
    assert path.is_file()
    np.testing.assert_array_equal(a, image_folds)
    saved = pd.read_csv(path)
    assert list(saved.columns) == ["image_id", "fold"] and len(saved) == 10015
    # reused: tamper with the file, the tampered folds come back (the file is read, not remade)
    saved.loc[saved["image_id"] == meta["image_id"][0], "fold"] = (image_folds[0] + 1) % 5
    saved.to_csv(path, index=False)
    b = splits.load_or_make_folds(meta, 5, "image", 0, key="ham-test", folds_dir=d)
    assert b[0] == (image_folds[0] + 1) % 5
    np.testing.assert_array_equal(b[1:], image_folds[1:])
    # any row order of the same data
    rev = meta.iloc[::-1]
    np.testing.assert_array_equal(splits.load_or_make_folds(rev, 5, "image", 0, key="ham-test", folds_dir=d), b[::-1])
    assert not list(d.glob(".*tmp*"))


def test_load_or_make_folds_refuses_saved_folds_of_other_images_and_a_path_as_key(tmp_path):
    df = pd.DataFrame({"image_id": [f"I{i}" for i in range(10)], "dx": ["nv", "mel"] * 5})
    splits.load_or_make_folds(df, 2, "image", 0, key="toy", folds_dir=tmp_path)
    other = df.copy()
    other.loc[0, "image_id"] = "ISIC_X"
    with pytest.raises(ValueError, match=r"do not match.*ISIC_X.*delete"):
        splits.load_or_make_folds(other, 2, "image", 0, key="toy", folds_dir=tmp_path)
    with pytest.raises(ValueError, match="do not match"):
        splits.load_or_make_folds(df.iloc[:8], 2, "image", 0, key="toy", folds_dir=tmp_path)
    with pytest.raises(ValueError, match="key"):
        splits.load_or_make_folds(df, 2, "image", 0, key="../evil", folds_dir=tmp_path)


def test_load_or_make_folds_saves_under_results_folds_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("METANET_RESULTS_DIR", str(tmp_path / "results"))
    df = pd.DataFrame({"image_id": [f"I{i}" for i in range(6)], "dx": ["nv", "mel"] * 3,
                       "lesion_id": ["a", "a", "b", "c", "d", "e"]})
    splits.load_or_make_folds(df, 2, "lesion", 3, key="k1")
    assert (tmp_path / "results" / "folds" / "k1-lesion-2-s3.csv").is_file()


def test_make_folds_refuses_an_unknown_scheme_one_fold_no_lesion_id_and_repeated_image_ids():
    df = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "dx": ["nv", "mel"] * 2})
    with pytest.raises(ValueError, match="scheme"):
        splits.make_folds(df, 2, "patient")
    with pytest.raises(ValueError, match="n_folds"):
        splits.make_folds(df, 1)
    with pytest.raises(KeyError, match="lesion_id"):
        splits.make_folds(df, 2, "lesion")
    with pytest.raises(ValueError, match="unique"):
        splits.make_folds(df.assign(image_id=["a", "a", "c", "d"]), 2)


def test_class_weights_are_n_over_7_times_the_class_count_like_sklearn_balanced(meta, image_folds):
    y = meta["dx"].map(DX_TO_INDEX).to_numpy()[image_folds != 0]
    w = splits.class_weights(y)
    counts = {dx: int((meta["dx"][image_folds != 0] == dx).sum()) for dx in DX_CODES}
    n = sum(counts.values())
    expected = [n / (7 * counts[dx]) for dx in DX_CODES]
    np.testing.assert_allclose(w, expected, rtol=1e-12)
    # mean weight per training image is 1
    assert w[y].mean() == pytest.approx(1.0)
    # same as sklearn's "balanced"
    from sklearn.utils.class_weight import compute_class_weight

    np.testing.assert_allclose(w, compute_class_weight("balanced", classes=np.arange(7), y=y))
    # dx strings give the same
    np.testing.assert_allclose(splits.class_weights(meta["dx"][image_folds != 0].to_numpy()), w)
    # NV (most frequent) lightest, DF (rarest) heaviest
    assert w.argmin() == DX_TO_INDEX["nv"] and w.argmax() == DX_TO_INDEX["df"]


def test_class_weights_give_an_absent_class_0_with_a_warning_and_refuse_bad_labels():
    np.testing.assert_allclose(splits.class_weights([0, 0, 0, 1], 2), [4 / 6, 4 / 2])
    with pytest.warns(UserWarning, match="absent"):
        w = splits.class_weights([0, 0, 2], 3)
    # k = 2 present classes: 3 / (2 * 2), 0, 3 / (2 * 1)
    np.testing.assert_allclose(w, [0.75, 0.0, 1.5])
    with pytest.raises(ValueError):
        splits.class_weights([0, 7], 7)
    with pytest.raises(ValueError):
        splits.class_weights([])
