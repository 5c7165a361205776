"""Scoring and run records: mean class recall (MCR), per-class recall, confusion matrices, and the records of
``results/runs`` read into one frame.

* The predicted class is the argmax of the probabilities; a row whose maximum two or more classes share (a tie)
  predicts nothing: wrong for its true class, in no confusion column (the ISIC 2018 Task 3 scorer's rule).
* MCR = the mean recall over the classes present in ``y_true`` (balanced accuracy; a class absent from a small
  fold has recall NaN and is left out).
* A record is complete when its ``manifest.json`` lists every file of :data:`RECORD_FILES` at its size
  (:func:`is_complete`: the trainer, the grid and the analysis share this one definition).

Example:
    >>> y = np.array([0, 0, 1, 2, 3, 4, 5, 6])
    >>> round(mean_class_recall(y, np.eye(7)[[0, 1, 1, 2, 3, 4, 5, 6]]), 4)   # MEL 1/2, the six others 1
    0.9286
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from .config import EXECUTION_ONLY, RunConfig
from .constants import CLASS_CODES, META_FIELDS
from .paths import runs_dir as default_runs_dir

__all__ = [
    "RECORD_FILES", "RECALL_COLUMNS", "SUPPORT_COLUMNS", "RecordError", "IncompleteRecordError",
    "labels_to_indices", "predicted_classes", "confusion", "per_class_recall", "mean_class_recall",
    "score_predictions", "is_complete", "load_record", "load_records", "meta_key", "setting_columns",
]

#: The files of a complete run record (``results/runs/<run_id>/``), each listed with its size in ``manifest.json``.
RECORD_FILES: tuple[str, ...] = ("config.json", "history.csv", "metrics.json", "predictions.csv", "labels.csv",
                                 "checkpoint.pt")
#: Per-class recall columns of :func:`load_records` frames, in the official class order.
RECALL_COLUMNS: tuple[str, ...] = tuple(f"recall_{c}" for c in CLASS_CODES)
#: Validation images of each class in a run (``n_val_MEL`` ...).
SUPPORT_COLUMNS: tuple[str, ...] = tuple(f"n_val_{c}" for c in CLASS_CODES)
#: The settings of a run: its config's fields but the fold and how it was launched (not part of ``run_id``).
SETTINGS: frozenset[str] = frozenset(f.name for f in dataclasses.fields(RunConfig)) - {"fold"} - EXECUTION_ONLY

_N = len(CLASS_CODES)
_INDEX = {c: i for i, c in enumerate(CLASS_CODES)}


class RecordError(ValueError):
    """A run record, a predictions file or labels are not usable; the message says why."""


class IncompleteRecordError(RecordError):
    """A run record folder is missing, half-written or damaged."""


# --------------------------------------------------------------------------- scoring


def labels_to_indices(labels: Iterable[Any]) -> np.ndarray:
    """Class indices (official order) from class codes, ``dx`` codes (any case) or indices.

    Example:
        >>> labels_to_indices(["MEL", "nv", "vasc", 2]).tolist()
        [0, 1, 6, 2]
    """
    out = []
    for v in labels:
        s = str(v).strip().upper()
        i = _INDEX.get(s, int(s) if s.isdigit() else -1)
        if not 0 <= i < _N:
            raise RecordError(f"unknown class label {v!r}; allowed: {', '.join(CLASS_CODES)} (any case) or 0..{_N - 1}")
        out.append(i)
    return np.asarray(out, dtype=np.int64)


def predicted_classes(probs: Any) -> np.ndarray:
    """Argmax class per row, ``-1`` where two or more classes share the maximum (a tie).

    Example:
        >>> predicted_classes([[0.5, 0.5, 0, 0, 0, 0, 0], [0.1, 0.9, 0, 0, 0, 0, 0]]).tolist()
        [-1, 1]
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != _N:
        raise RecordError(f"probabilities must have shape (n, {_N}); got {p.shape}")
    if not np.isfinite(p).all():
        raise RecordError("probabilities contain NaN or infinity")
    pred = p.argmax(axis=1)
    pred[(p == p.max(axis=1, keepdims=True)).sum(axis=1) > 1] = -1
    return pred


def _y_pred(y_true: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    y = labels_to_indices(np.asarray(y_true).ravel().tolist())
    pred = np.asarray(probs).astype(np.int64) if np.ndim(probs) == 1 else predicted_classes(probs)
    if len(y) != len(pred):
        raise RecordError(f"{len(y)} labels but {len(pred)} predictions")
    return y, pred


def confusion(y_true: Any, probs: Any) -> np.ndarray:
    """7 x 7 confusion matrix: rows the true class, columns the predicted one (tied rows in no column).

    ``probs`` may also be predicted class indices (``-1``: a tie).

    Example:
        >>> confusion([0, 0, 1], [1, -1, 1])[:2, :2].tolist()
        [[0, 1], [0, 1]]
    """
    y, pred = _y_pred(y_true, probs)
    cm = np.zeros((_N, _N), dtype=np.int64)
    np.add.at(cm, (y[pred >= 0], pred[pred >= 0]), 1)
    return cm


def per_class_recall(y_true: Any, probs: Any) -> dict[str, float]:
    """Recall of every class by class code; NaN for a class absent from ``y_true``.

    Example:
        >>> r = per_class_recall([0, 0, 1], [0, 1, 1])
        >>> r["MEL"], r["NV"], r["DF"] != r["DF"]
        (0.5, 1.0, True)
    """
    y, _ = _y_pred(y_true, probs)
    support = np.bincount(y, minlength=_N)
    right = np.diag(confusion(y, probs))
    return {c: float(right[i] / support[i]) if support[i] else float("nan") for i, c in enumerate(CLASS_CODES)}


def mean_class_recall(y_true: Any, probs: Any) -> float:
    """Mean class recall (balanced accuracy) of argmax predictions; a tie counts as wrong.

    Example:
        >>> mean_class_recall([0, 1], [[0.6, 0.4, 0, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0, 0, 0]])
        0.5
    """
    rec = np.array(list(per_class_recall(y_true, probs).values()))
    return float(np.nanmean(rec)) if np.isfinite(rec).any() else float("nan")


def _labels_series(labels: Any) -> pd.Series:
    """Class indices by image, from a frame ``image,dx`` or ``image,MEL,...`` (the official one-hot ground truth)
    or a mapping (or Series) image -> class."""
    if isinstance(labels, pd.DataFrame):
        if "image" not in labels or not ("dx" in labels or set(CLASS_CODES) <= set(labels.columns)):
            raise RecordError(f"labels need the columns image,dx or image,{','.join(CLASS_CODES)}; got {list(labels)}")
        onehot = labels.reindex(columns=CLASS_CODES).to_numpy(dtype=float)
        if "dx" not in labels and not (np.isin(onehot, (0.0, 1.0)).all() and (onehot.sum(axis=1) == 1).all()):
            raise RecordError("one-hot labels must hold exactly one 1.0 per row")
        labels = pd.Series(labels["dx"].to_numpy() if "dx" in labels else onehot.argmax(axis=1),
                           index=labels["image"].astype(str))
    s = pd.Series(labels)
    s = pd.Series(labels_to_indices(s.tolist()), index=s.index.astype(str))
    if s.index.has_duplicates:
        raise RecordError(f"labels list some images twice, e.g. {s.index[s.index.duplicated()][:5].tolist()}")
    return s


def score_predictions(pred_df: pd.DataFrame, labels: Any) -> dict[str, Any]:
    """Score an ISIC-format predictions frame (``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``, probabilities) against
    labels of the same images (a frame ``image,dx`` as ``labels.csv``, the official one-hot ground truth, or a
    mapping image -> class), matched by image.

    Returns:
        ``{"mcr", "per_class_recall": {code: recall}, "confusion_matrix": 7x7 list, "support": {code: n},
        "n", "n_ties"}``.

    Example:
        >>> pred = pd.DataFrame([["a", .9, .1, 0, 0, 0, 0, 0], ["b", .2, .8, 0, 0, 0, 0, 0]],
        ...                     columns=["image", *CLASS_CODES])
        >>> score_predictions(pred, {"a": "mel", "b": "mel"})["mcr"]
        0.5
    """
    if set(map(str, pred_df.columns)) != {"image", *CLASS_CODES}:
        raise RecordError(f"predictions must have exactly the columns image,{','.join(CLASS_CODES)}; "
                          f"got {','.join(map(str, pred_df.columns))}")
    images = pred_df["image"].astype(str)
    if images.duplicated().any():
        raise RecordError(f"predictions list some images twice, e.g. {images[images.duplicated()].head(5).tolist()}")
    lab = _labels_series(labels)
    no_label, no_pred = sorted(set(images) - set(lab.index)), sorted(set(lab.index) - set(images))
    if no_label or no_pred:
        raise RecordError(f"predictions and labels disagree on the images: {len(no_label)} predicted image(s) "
                          f"without a label (e.g. {no_label[:3]}), {len(no_pred)} labelled image(s) without a "
                          f"prediction (e.g. {no_pred[:3]})")
    y = lab.loc[images].to_numpy()
    pred = predicted_classes(pred_df[list(CLASS_CODES)].to_numpy(dtype=np.float64))
    recall = per_class_recall(y, pred)
    vals = np.array(list(recall.values()))
    return {"mcr": float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan"),
            "per_class_recall": recall, "confusion_matrix": confusion(y, pred).tolist(),
            "support": dict(zip(CLASS_CODES, np.bincount(y, minlength=_N).tolist())),
            "n": int(len(y)), "n_ties": int((pred < 0).sum())}


# --------------------------------------------------------------------------- records


def _incomplete(run_dir: Path) -> str:
    """Why ``run_dir`` is not a complete record, or "" when it is."""
    if not run_dir.is_dir():
        return "does not exist"
    try:
        listed = {n: info["bytes"] for n, info in json.loads((run_dir / "manifest.json").read_text())["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "has no readable manifest.json (a half-written record)"
    bad = [n for n in RECORD_FILES if not (run_dir / n).is_file() or (run_dir / n).stat().st_size != listed.get(n)]
    return f"is incomplete or damaged after it was written: {', '.join(bad)}" if bad else ""


def is_complete(run_dir: str | Path) -> bool:
    """True when the record folder's ``manifest.json`` lists every file of :data:`RECORD_FILES` at its size.

    Example:
        >>> import tempfile
        >>> is_complete(tempfile.mkdtemp())
        False
    """
    return not _incomplete(Path(run_dir))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RecordError(f"{path} is not valid JSON: {e}") from None


def load_record(run_dir: str | Path) -> dict[str, Any]:
    """Read one complete run record folder.

    Returns:
        ``{"run_id", "path", "config", "metrics", "history" (frame), "predictions" (frame), "labels" (frame
        ``image,dx``), "scores"}``; ``scores`` is :func:`score_predictions` of the predictions against the labels.

    Raises:
        IncompleteRecordError: the folder is missing, half-written or damaged (see :func:`is_complete`).
        RecordError: a file is malformed or the predictions and labels do not match.
    """
    run_dir = Path(run_dir)
    why = _incomplete(run_dir)
    if why:
        raise IncompleteRecordError(f"run record {run_dir} {why}; rerun it or delete the folder")
    config, metrics = _read_json(run_dir / "config.json"), _read_json(run_dir / "metrics.json")
    predictions = pd.read_csv(run_dir / "predictions.csv", dtype={"image": str})
    labels = pd.read_csv(run_dir / "labels.csv", dtype={"image": str})
    try:
        scores = score_predictions(predictions, labels)
    except RecordError as e:
        raise RecordError(f"run record {run_dir}: {e}") from None
    return {"run_id": config.get("run_id", run_dir.name), "path": str(run_dir), "config": config, "metrics": metrics,
            "history": pd.read_csv(run_dir / "history.csv"), "predictions": predictions, "labels": labels,
            "scores": scores}


def meta_key(features: Iterable[str] | str) -> str:
    """Metadata fields as one string in the fixed order (``"age+sex+localization"``; ``"none"`` for no field).

    Example:
        >>> meta_key(["localization", "age"]), meta_key("sex+age"), meta_key(())
        ('age+localization', 'age+sex', 'none')
    """
    got = set(features.split("+") if isinstance(features, str) else features)
    return "+".join(f for f in META_FIELDS if f in got) or "none"


def _float(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _record_row(rec: dict[str, Any]) -> dict[str, Any]:
    """One frame row: the config's settings, the scores of the predictions, then metrics.json's values."""
    row: dict[str, Any] = {"run_id": rec["run_id"]}
    for k, v in rec["config"].items():  # lists as tuples: hashable cells
        row[k] = tuple(v) if isinstance(v, list) else json.dumps(v, sort_keys=True) if isinstance(v, dict) else v
    feats = rec["config"].get("meta_features", META_FIELDS)
    row["meta_features"] = meta_key(feats)
    row.update({f"meta_{f}": f in feats for f in META_FIELDS})
    s = rec["scores"]
    row["mcr"] = s["mcr"]
    row.update({f"recall_{c}": s["per_class_recall"][c] for c in CLASS_CODES})
    row.update({f"n_val_{c}": s["support"][c] for c in CLASS_CODES})
    row.update(n_val=s["n"], n_ties=s["n_ties"], path=rec["path"], mcr_metrics=_float(rec["metrics"].get("mcr")))
    for k, v in rec["metrics"].items():  # a name the config or the scores already use: "<name>_metrics"
        if k not in ("run_id", "mcr") and not isinstance(v, (list, dict)):
            row[k if k not in row else f"{k}_metrics"] = v
    return row


def load_records(runs_dir: str | Path | None = None, run_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per complete run record of ``runs_dir`` (default ``results/runs``), or of the ``run_ids`` given
    (each must be complete): its settings, MCR and per-class recall (fractions) scored from ``predictions.csv``
    against ``labels.csv``, and the values of its ``metrics.json``. An incomplete record is skipped with a warning.

    ``meta_features`` becomes one string (:func:`meta_key`) with a flag per field (``meta_age`` ...); ``n_val_<CODE>``
    counts the validation images of each class. A ``metrics.json`` value whose name the config or the scores use
    gets the suffix ``_metrics`` (``precision_metrics``: what the run computed in; ``mcr_metrics``: the trainer's
    MCR, with a warning where it differs from the scored one).

    Example:
        >>> import tempfile
        >>> load_records(tempfile.mkdtemp()).empty
        True
    """
    runs_dir = Path(runs_dir or default_runs_dir())
    if run_ids is not None:
        rows = [_record_row(load_record(runs_dir / rid)) for rid in run_ids]
    else:
        rows, skipped = [], []
        folders = sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if runs_dir.is_dir() else []
        for d in folders:
            try:
                rows.append(_record_row(load_record(d)))
            except IncompleteRecordError:
                skipped.append(d.name)
        if skipped:
            warnings.warn(f"skipped {len(skipped)} incomplete run record(s) in {runs_dir}: "
                          f"{', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}", stacklevel=2)
    df = pd.DataFrame(rows)
    for c in ("run_id", "backbone", "fusion", "meta_features", "meta_layers", "fold", "n_folds", "mcr",
              *RECALL_COLUMNS):
        if c not in df:
            df[c] = pd.Series(dtype=float if c.startswith(("mcr", "recall_")) else object)
    if len(df):
        bad = df.loc[(df["mcr_metrics"] - df["mcr"]).abs() > 1e-6, "run_id"].tolist()
        if bad:
            warnings.warn(f"{len(bad)} run(s) report an MCR in metrics.json that differs from the one scored from "
                          f"predictions.csv (e.g. {bad[:3]}); 'mcr' is the scored one", stacklevel=2)
        df = df.sort_values(["backbone", "fusion", "meta_features", "meta_layers", "fold"], kind="stable")
    return df.reset_index(drop=True)


def setting_columns(records: pd.DataFrame) -> list[str]:
    """The columns of a records frame that are settings (:data:`SETTINGS`): runs that agree on them differ only
    in the fold and may be averaged. Outcomes, the fold, and launch settings (CUDA graphs, checkpoint interval,
    not part of ``run_id``) are not settings.

    Example:
        >>> setting_columns(pd.DataFrame(columns=["run_id", "backbone", "fold", "mcr", "epochs", "cuda_graphs"]))
        ['backbone', 'epochs']
    """
    return [c for c in records.columns if c in SETTINGS]
