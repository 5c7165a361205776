"""Scoring (mean class recall, MCR) and the run records, read into the one frame tables, report and figures share.

The predicted class is the argmax; a tie predicts nothing, wrong for its true class and in no confusion column (the
ISIC 2018 Task 3 scorer's rule). MCR is the mean recall over the classes present (balanced accuracy).

Example:
    >>> probs = np.eye(7)[[0, 1, 1, 2, 3, 4, 5, 6]]  # the second MEL image taken for NV
    >>> round(mean_class_recall(["MEL", "mel", 1, 2, 3, 4, 5, 6], probs), 4)  # MEL 1/2, the six others 1
    0.9286
    >>> predicted_classes([[0.5, 0.5, 0, 0, 0, 0, 0]]), meta_key(["localization", "age"])  # a tie; fixed order
    (array([-1]), 'age+localization')
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

#: The files of a complete run record, each listed with its size in ``manifest.json``.
RECORD_FILES: tuple[str, ...] = ("config.json", "history.csv", "metrics.json", "predictions.csv", "labels.csv",
                                 "checkpoint.pt")
#: The settings of a run but the fold and how it was launched: runs that agree on them differ only in the fold.
SETTINGS: frozenset[str] = frozenset(f.name for f in dataclasses.fields(RunConfig)) - {"fold"} - EXECUTION_ONLY

_N = len(CLASS_CODES)
_INDEX = {c: i for i, c in enumerate(CLASS_CODES)}


class RecordError(ValueError):
    """A run record, a predictions file or labels are not usable."""


class IncompleteRecordError(RecordError):
    """A run record is missing, half-written or damaged."""


def labels_to_indices(labels: Iterable[Any]) -> np.ndarray:
    """Class indices from class codes, ``dx`` codes (any case) or indices."""
    out = []
    for v in labels:
        s = str(v).strip().upper()
        i = _INDEX.get(s, int(s) if s.isdigit() else -1)
        if not 0 <= i < _N:
            raise RecordError(f"unknown class label {v!r}; allowed: {', '.join(CLASS_CODES)} (any case) or 0..{_N - 1}")
        out.append(i)
    return np.asarray(out, dtype=np.int64)


def predicted_classes(probs: Any) -> np.ndarray:
    """Argmax class per row, ``-1`` for a tie."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != _N:
        raise RecordError(f"probabilities must have shape (n, {_N}); got {p.shape}")
    if not np.isfinite(p).all():
        raise RecordError("probabilities contain NaN or infinity")
    pred = p.argmax(axis=1)
    pred[(p == p.max(axis=1, keepdims=True)).sum(axis=1) > 1] = -1
    return pred


def confusion(y_true: Any, probs: Any) -> np.ndarray:
    """7 x 7 confusion matrix, rows the true class; ``probs`` may be predicted indices."""
    y = labels_to_indices(np.asarray(y_true).ravel().tolist())
    pred = np.asarray(probs).astype(np.int64) if np.ndim(probs) == 1 else predicted_classes(probs)
    if len(y) != len(pred):
        raise RecordError(f"{len(y)} labels but {len(pred)} predictions")
    cm = np.zeros((_N, _N), dtype=np.int64)
    np.add.at(cm, (y[pred >= 0], pred[pred >= 0]), 1)
    return cm


def per_class_recall(y_true: Any, probs: Any) -> dict[str, float]:
    """Recall by class code; NaN for a class absent from ``y_true``."""
    support = np.bincount(labels_to_indices(np.asarray(y_true).ravel().tolist()), minlength=_N)
    right = np.diag(confusion(y_true, probs))
    return {c: float(right[i] / support[i]) if support[i] else float("nan") for i, c in enumerate(CLASS_CODES)}


def mean_class_recall(y_true: Any, probs: Any) -> float:
    """Mean class recall (balanced accuracy); a tie counts as wrong."""
    rec = np.array(list(per_class_recall(y_true, probs).values()))
    return float(np.nanmean(rec)) if np.isfinite(rec).any() else float("nan")


def _labels_series(labels: Any) -> pd.Series:
    """Class indices by image from a frame ``image,dx`` or ``image,MEL,...`` or a mapping image -> class."""
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
    """``mcr, per_class_recall, confusion_matrix, support, n, n_ties`` of an ISIC-format predictions frame against
    labels matched by image (``labels.csv``, the official ground truth or a mapping image -> class)."""
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
    return {"mcr": mean_class_recall(y, pred), "per_class_recall": per_class_recall(y, pred),
            "confusion_matrix": confusion(y, pred).tolist(),
            "support": dict(zip(CLASS_CODES, np.bincount(y, minlength=_N).tolist())),
            "n": int(len(y)), "n_ties": int((pred < 0).sum())}


def _incomplete(run_dir: Path) -> str:
    if not run_dir.is_dir():
        return "does not exist"
    try:
        listed = {n: info["bytes"] for n, info in json.loads((run_dir / "manifest.json").read_text())["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "has no readable manifest.json (a half-written record)"
    bad = [n for n in RECORD_FILES if not (run_dir / n).is_file() or (run_dir / n).stat().st_size != listed.get(n)]
    return f"is incomplete or damaged after it was written: {', '.join(bad)}" if bad else ""


def is_complete(run_dir: str | Path) -> bool:
    """Whether ``manifest.json`` lists every file of :data:`RECORD_FILES` at its size."""
    return not _incomplete(Path(run_dir))


def load_record(run_dir: str | Path) -> dict[str, Any]:
    """One complete run record: ``run_id, path, config, metrics, history, predictions, labels, scores``."""
    run_dir = Path(run_dir)
    if why := _incomplete(run_dir):
        raise IncompleteRecordError(f"run record {run_dir} {why}; rerun it or delete the folder")
    try:
        config, metrics = (json.loads((run_dir / n).read_text()) for n in ("config.json", "metrics.json"))
        predictions = pd.read_csv(run_dir / "predictions.csv", dtype={"image": str})
        labels = pd.read_csv(run_dir / "labels.csv", dtype={"image": str})
        scores = score_predictions(predictions, labels)
    except ValueError as e:
        raise RecordError(f"run record {run_dir}: {e}") from None
    return {"run_id": config.get("run_id", run_dir.name), "path": str(run_dir), "config": config, "metrics": metrics,
            "history": pd.read_csv(run_dir / "history.csv"), "predictions": predictions, "labels": labels,
            "scores": scores}


def meta_key(features: Iterable[str] | str) -> str:
    """Metadata fields as one string in the fixed order (``"none"`` for no field)."""
    got = set(features.split("+") if isinstance(features, str) else features)
    return "+".join(f for f in META_FIELDS if f in got) or "none"


def _float(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _record_row(rec: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"run_id": rec["run_id"]}
    for k, v in rec["config"].items():  # tuples: hashable cells
        row[k] = tuple(v) if isinstance(v, list) else json.dumps(v, sort_keys=True) if isinstance(v, dict) else v
    feats, s = rec["config"].get("meta_features", META_FIELDS), rec["scores"]
    row.update(meta_features=meta_key(feats), **{f"meta_{f}": f in feats for f in META_FIELDS}, mcr=s["mcr"])
    row.update({f"recall_{c}": s["per_class_recall"][c] for c in CLASS_CODES})
    row.update({f"n_val_{c}": s["support"][c] for c in CLASS_CODES})
    row.update(n_val=s["n"], n_ties=s["n_ties"], path=rec["path"], mcr_metrics=_float(rec["metrics"].get("mcr")))
    for k, v in rec["metrics"].items():  # a name the config or the scores already use: "<name>_metrics"
        if k not in ("run_id", "mcr") and not isinstance(v, (list, dict)):
            row[k if k not in row else f"{k}_metrics"] = v
    return row


def load_records(runs_dir: str | Path | None = None, run_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per complete record of ``runs_dir`` (default ``results/runs``) or of ``run_ids``: the config's
    settings, ``mcr``, ``recall_<CODE>`` and ``n_val_<CODE>`` scored from ``predictions.csv``, and the scalars of
    ``metrics.json`` (``<name>_metrics`` where the name is taken)."""
    runs_dir = Path(runs_dir or default_runs_dir())
    if run_ids is not None:
        rows = [_record_row(load_record(runs_dir / rid)) for rid in run_ids]
    else:
        rows, skipped = [], []
        for d in sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []:
            if d.is_dir() and not d.name.startswith("."):
                try:
                    rows.append(_record_row(load_record(d)))
                except IncompleteRecordError:
                    skipped.append(d.name)
        if skipped:
            warnings.warn(f"skipped {len(skipped)} incomplete run record(s) in {runs_dir}: "
                          f"{', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}", stacklevel=2)
    df = pd.DataFrame(rows)
    for c in ("run_id", "backbone", "fusion", "meta_features", "meta_layers", "fold", "n_folds", "mcr",
              *(f"recall_{code}" for code in CLASS_CODES)):
        if c not in df:
            df[c] = pd.Series(dtype=float if c.startswith(("mcr", "recall_")) else object)
    if len(df):
        bad = df.loc[(df["mcr_metrics"] - df["mcr"]).abs() > 1e-6, "run_id"].tolist()
        if bad:
            warnings.warn(f"{len(bad)} run(s) report an MCR in metrics.json that differs from the one scored from "
                          f"predictions.csv (e.g. {bad[:3]}); 'mcr' is the scored one", stacklevel=2)
        df = df.sort_values(["backbone", "fusion", "meta_features", "meta_layers", "fold"], kind="stable")
    return df.reset_index(drop=True)
