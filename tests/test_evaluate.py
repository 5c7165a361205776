"""Scoring of predictions and run records (metanet_utils.evaluate)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from _records import expected_scores, fake_fold_run, probs_for, write_fake_run
from sklearn.metrics import balanced_accuracy_score

from metanet_utils import evaluate as ev
from metanet_utils.constants import CLASS_CODES


def _onehot(pred):
    return np.eye(7)[pred]


# --------------------------------------------------------------------------- metrics


def test_mcr_is_the_mean_of_the_seven_recalls_by_hand():
    y = [0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6]
    pred = [0, 0, 0, 1, 1, 0, 2, 3, 4, 5, 6]  # MEL 3/4, NV 1/2, the five others 1
    assert ev.mean_class_recall(y, _onehot(pred)) == pytest.approx((0.75 + 0.5 + 5) / 7)
    rec = ev.per_class_recall(y, _onehot(pred))
    assert list(rec) == list(CLASS_CODES)
    assert rec["MEL"] == 0.75 and rec["NV"] == 0.5 and rec["VASC"] == 1.0


def test_mcr_equals_balanced_accuracy_without_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 500)
    probs = rng.random((500, 7))
    assert ev.mean_class_recall(y, probs) == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)))


def test_tie_counts_as_wrong_even_if_true_class_is_among_the_tied():
    probs = np.array([[0.4, 0.4, 0.2, 0, 0, 0, 0],   # true MEL, tied with NV -> wrong
                      [0.9, 0.1, 0, 0, 0, 0, 0],     # true MEL, right
                      [0.0, 1.0, 0, 0, 0, 0, 0]])    # true NV, right
    y = [0, 0, 1]
    assert ev.predicted_classes(probs).tolist() == [-1, 0, 1]
    assert ev.per_class_recall(y, probs)["MEL"] == 0.5
    assert ev.mean_class_recall(y, probs) == pytest.approx(0.75)
    cm = ev.confusion(y, probs)  # the tied row sits in no column
    assert cm.shape == (7, 7) and cm[0].sum() == 1 and cm[0, 0] == 1 and cm.sum() == 2


def test_absent_class_is_nan_and_left_out_of_mcr():
    y = [0, 0, 1]
    probs = _onehot([0, 1, 1])
    rec = ev.per_class_recall(y, probs)
    assert math.isnan(rec["DF"])
    assert ev.mean_class_recall(y, probs) == pytest.approx((0.5 + 1.0) / 2)


def test_labels_in_any_spelling_or_index_map_to_the_official_order_and_unknown_ones_are_refused():
    assert ev.labels_to_indices(["MEL", "nv", "Bcc", 3, "bkl", "df", "VASC"]).tolist() == list(range(7))
    with pytest.raises(ev.RecordError, match="unknown class label"):
        ev.labels_to_indices(["melanoma"])


def test_confusion_rows_are_true_classes_and_columns_predictions():
    cm = ev.confusion([0, 0, 1], _onehot([1, 0, 1]))
    assert cm[0, 1] == 1 and cm[0, 0] == 1 and cm[1, 1] == 1 and cm.sum() == 3


# --------------------------------------------------------------------------- predictions files


def _pred_df(images, probs):
    return pd.DataFrame(probs, columns=list(CLASS_CODES)).assign(image=images)[["image", *CLASS_CODES]]


def test_score_predictions_matches_by_image_not_by_order():
    y = [0, 1, 2, 3, 4, 5, 6, 0]
    pred = [0, 1, 2, 3, 4, 5, 6, 1]
    imgs = [f"ISIC_{i}" for i in range(8)]
    pdf = _pred_df(imgs, probs_for(y, pred)).iloc[::-1]
    labels = pd.DataFrame({"image": imgs, "dx": [CLASS_CODES[t].lower() for t in y]})
    s = ev.score_predictions(pdf, labels)
    exp = expected_scores(y, pred)
    assert s["mcr"] == pytest.approx(exp["mcr"])
    assert s["n"] == 8 and s["n_ties"] == 0
    assert s["support"]["MEL"] == 2
    assert np.array(s["confusion_matrix"]).shape == (7, 7)
    # the same with official one-hot ground truth and a mapping
    onehot = pd.DataFrame(np.eye(7)[y], columns=list(CLASS_CODES)).assign(image=imgs)
    assert ev.score_predictions(pdf, onehot)["mcr"] == pytest.approx(exp["mcr"])
    assert ev.score_predictions(pdf, dict(zip(imgs, y)))["mcr"] == pytest.approx(exp["mcr"])


def test_score_predictions_refuses_mismatches():
    imgs = ["a", "b"]
    pdf = _pred_df(imgs, _onehot([0, 1]))
    with pytest.raises(ev.RecordError, match="disagree on the images"):
        ev.score_predictions(pdf, {"a": "mel", "c": "nv"})
    with pytest.raises(ev.RecordError, match="exactly the columns"):
        ev.score_predictions(pdf.drop(columns="VASC"), {"a": "mel", "b": "nv"})
    with pytest.raises(ev.RecordError, match="twice"):
        ev.score_predictions(pd.concat([pdf, pdf]), {"a": "mel", "b": "nv"})
    bad = pdf.copy()
    bad.loc[0, "MEL"] = np.nan
    with pytest.raises(ev.RecordError, match="NaN"):
        ev.score_predictions(bad, {"a": "mel", "b": "nv"})


# --------------------------------------------------------------------------- records


def test_load_record_reads_every_file_and_scores_the_predictions(tmp_path):
    out = fake_fold_run(tmp_path, {"backbone": "resnet10t", "fold": 1}, {0: 5, 1: 10, 2: 7})
    rec = ev.load_record(out["path"])
    assert set(rec) >= {"config", "metrics", "predictions", "labels", "history", "scores"}
    assert rec["config"]["backbone"] == "resnet10t"
    assert rec["scores"]["mcr"] == pytest.approx(out["mcr"])
    row = ev.load_records(tmp_path).iloc[0]
    assert row["n_val"] == 70 and row["n_train"] == 280 and row["n_ties"] == 0
    assert list(rec["predictions"].columns) == ["image", *CLASS_CODES]


def test_a_complete_record_is_one_definition_shared_with_the_trainer(tmp_path):
    """train.is_complete is evaluate.is_complete: a manifest listing every file of RECORD_FILES at its size."""
    from metanet_utils import train

    assert train.is_complete is ev.is_complete and train.RECORD_FILES is ev.RECORD_FILES
    y = [0, 1]
    d = write_fake_run(tmp_path, {"backbone": "resnet10t"}, probs_for(y, y), y)
    assert ev.is_complete(d) and "checkpoint.pt" in json.loads((d / "manifest.json").read_text())["files"]
    (d / "checkpoint.pt").unlink()  # a record without the trainer's checkpoint is not complete
    assert not ev.is_complete(d)
    with pytest.raises(ev.IncompleteRecordError, match="checkpoint.pt"):
        ev.load_record(d)
    (d / "manifest.json").write_text("{")  # half-written
    assert not ev.is_complete(d) and not ev.is_complete(tmp_path / "absent")


@pytest.mark.parametrize("missing", ["predictions.csv", "labels.csv", "config.json", "metrics.json"])
def test_load_record_refuses_incomplete(tmp_path, missing):
    y = [0, 1]
    d = write_fake_run(tmp_path, {"backbone": "resnet10t"}, probs_for(y, y), y, omit=[missing])
    with pytest.raises(ev.IncompleteRecordError, match=missing.replace(".", r"\.")):
        ev.load_record(d)
    with pytest.raises(ev.IncompleteRecordError, match="does not exist"):
        ev.load_record(tmp_path / "nope")


def test_load_records_one_row_per_run(tmp_path):
    exp = {}
    for fold in range(3):
        for fusion in ("none", "metanet"):
            r = fake_fold_run(tmp_path, {"backbone": "resnet10t", "fusion": fusion, "fold": fold},
                              {c: (fold + c) % 10 for c in range(7)})
            exp[(fusion, fold)] = r
    fake_fold_run(tmp_path, {"backbone": "resnet10t", "fusion": "metanet", "fold": 0,
                             "meta_features": ("localization", "age")}, {c: 3 for c in range(7)})
    (tmp_path / ".stage-abc").mkdir()  # a staging folder of an unfinished record: ignored
    df = ev.load_records(tmp_path)
    assert len(df) == 7
    for col in ("run_id", "backbone", "fusion", "meta_features", "meta_layers", "fold", "n_folds", "split_scheme",
                "data_kind", "data_fingerprint", "epochs", "mcr", *(f"recall_{c}" for c in CLASS_CODES)):
        assert col in df.columns, col
    assert set(df["meta_features"]) == {"age+sex+localization", "age+localization"}
    sub = df[df["meta_features"] == "age+localization"].iloc[0]
    assert bool(sub["meta_age"]) and not bool(sub["meta_sex"]) and bool(sub["meta_localization"])
    for (fusion, fold), r in exp.items():
        row = df[(df.fusion == fusion) & (df.fold == fold) & (df.meta_features == "age+sex+localization")]
        assert len(row) == 1
        assert row["mcr"].iloc[0] == pytest.approx(r["mcr"])
        for code in CLASS_CODES:
            assert row[f"recall_{code}"].iloc[0] == pytest.approx(r["per_class_recall"][code])
    # run_ids subset
    ids = df["run_id"].iloc[:2].tolist()
    assert ev.load_records(tmp_path, run_ids=ids)["run_id"].tolist() == ids


def test_load_records_skips_incomplete_with_warning(tmp_path):
    fake_fold_run(tmp_path, {"backbone": "resnet10t", "fold": 0}, {0: 1})
    y = [0, 1]
    bad = write_fake_run(tmp_path, {"backbone": "resnet10t", "fold": 1}, probs_for(y, y), y,
                         omit=["predictions.csv"])
    with pytest.warns(UserWarning, match="incomplete"):
        df = ev.load_records(tmp_path)
    assert len(df) == 1
    with pytest.raises(ev.IncompleteRecordError):  # asked for by id: it must be complete
        ev.load_records(tmp_path, run_ids=[bad.name])


def test_load_records_empty_folder_has_columns(tmp_path):
    df = ev.load_records(tmp_path)
    assert df.empty and "mcr" in df.columns and "backbone" in df.columns
    assert ev.load_records(tmp_path / "absent").empty


def test_load_records_scores_the_predictions_and_warns_where_metrics_json_says_otherwise(tmp_path):
    y = [0, 1, 2, 3, 4, 5, 6]
    write_fake_run(tmp_path, {"backbone": "resnet10t"}, probs_for(y, y), y, metrics={"mcr": 0.5})
    with pytest.warns(UserWarning, match="differs"):
        df = ev.load_records(tmp_path)
    assert df["mcr"].iloc[0] == pytest.approx(1.0) and df["mcr_metrics"].iloc[0] == 0.5


def test_load_records_row_carries_every_metrics_json_and_config_json_value_flattened(tmp_path):
    """Each scalar of metrics.json is a column (under ``<name>_metrics`` where the config or the scores use the
    name: ``precision_metrics`` is what the run computed in, ``precision`` the setting), config.json's settings
    are columns (lists as tuples, meta_features one string plus a flag per field), and the scores of the
    predictions give ``mcr``, ``recall_<CODE>``, ``n_val`` and ``n_val_<CODE>``."""
    y = [0, 0, 1, 1, 1, 2, 3, 4, 5, 6]
    pred = [0, 1, 1, 1, 0, 2, 3, 4, 5, 6]  # MEL 1/2, NV 2/3
    d = write_fake_run(tmp_path, {"backbone": "resnet10t", "fusion": "metanet", "fold": 3, "n_folds": 5,
                                  "meta_features": ("localization", "age"), "milestones": (5, 9), "epochs": 12},
                       probs_for(y, pred), y,
                       metrics={"epochs_done": 11, "wall_time_s": 98.5, "device": "NVIDIA H100 80GB HBM3",
                                "images_per_s": 1234.5, "labels_source": "groundtruth csv", "n_train": 8012,
                                "precision": "bfloat16"})
    m = json.loads((d / "metrics.json").read_text())
    c = json.loads((d / "config.json").read_text())
    row = ev.load_records(tmp_path).iloc[0]
    for key in ("epochs_done", "wall_time_s", "device", "images_per_s", "labels_source", "n_train"):
        assert row[key] == m[key], key
    assert row["precision_metrics"] == "bfloat16" and row["precision"] == c["precision"] == "auto"
    assert row["mcr_metrics"] == m["mcr"] and row["n_val_metrics"] == m["n_val"]
    for key, value in c.items():
        if key not in ("meta_features", "run_id"):
            assert row[key] == (tuple(value) if isinstance(value, list) else value), key
    assert row["run_id"] == c["run_id"] == d.name and row["path"] == str(d)
    assert row["milestones"] == (5, 9) and row["fold"] == 3 and row["epochs"] == 12
    assert c["meta_features"] == ["localization", "age"]  # as given ...
    assert row["meta_features"] == "age+localization"  # ... one string in the fixed field order
    assert (row["meta_age"], row["meta_sex"], row["meta_localization"]) == (True, False, True)
    assert [row[f"recall_{code}"] for code in CLASS_CODES] == pytest.approx([0.5, 2 / 3, 1, 1, 1, 1, 1])
    assert row["mcr"] == pytest.approx((0.5 + 2 / 3 + 5) / 7) and row["n_val"] == 10 and row["n_ties"] == 0
    assert [row[f"n_val_{code}"] for code in CLASS_CODES] == [2, 3, 1, 1, 1, 1, 1]
    assert not {"mcr", "recall_MEL", "n_val", "precision_metrics", "fold", "run_id"} & ev.SETTINGS  # outcomes
    assert {"backbone", "fusion", "meta_features", "epochs", "precision"} <= ev.SETTINGS


def test_load_records_counts_a_tied_top_class_as_a_tie_and_a_wrong_prediction(tmp_path):
    y = [0, 0, 1, 2, 3, 4, 5, 6]
    pred = [-1, 0, 1, 2, 3, 4, 5, 6]  # the first MEL image ties with NV
    write_fake_run(tmp_path, {"backbone": "resnet10t"}, probs_for(y, pred), y)
    row = ev.load_records(tmp_path).iloc[0]
    assert row["n_ties"] == 1 and row["recall_MEL"] == 0.5
    assert row["mcr"] == pytest.approx(expected_scores(y, pred)["mcr"])


def test_integer_labels_fast_path_checks_range():
    assert ev.labels_to_indices(np.array([0, 6])).tolist() == [0, 6]
    with pytest.raises(ev.RecordError, match="0..6"):
        ev.labels_to_indices(np.array([0, 7]))


def test_load_record_refuses_a_file_damaged_after_writing(tmp_path):
    """A record whose file no longer matches the size in manifest.json is not read as complete."""
    y = [0, 1, 2]
    d = write_fake_run(tmp_path, {"backbone": "resnet10t"}, probs_for(y, y), y)
    ev.load_record(d)
    pred = d / "predictions.csv"
    pred.write_text(pred.read_text()[:-10])
    with pytest.raises(ev.IncompleteRecordError, match="predictions.csv"):
        ev.load_record(d)
