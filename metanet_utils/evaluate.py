"""Scoring of run records: mean class recall (MCR), per-class recall, confusion matrices,
and their aggregation over cross-validation folds.

Conventions (the paper specifies neither the tie rule nor the kind of standard deviation: the kit takes
the ISIC 2018 Task 3 scorer's argmax and tie rule, and chooses the sample std):

* The predicted class of an image is the argmax of its probabilities. A row whose maximum
  is shared by two or more classes (a *tie*) predicts nothing, as in the ISIC scorer: it counts as wrong
  for its true class and appears in no column of the 7x7 confusion matrix (ask
  ``confusion(..., include_ties=True)`` for an 8th "tie" column).
* Recall of a class = correct / all images of that class (ties included in the denominator).
* MCR = the mean of the per-class recalls over the classes present in ``y_true``
  (= balanced accuracy; a class absent from a small validation fold has recall NaN and is
  left out of the mean, as scikit-learn's ``balanced_accuracy_score`` does).
* Over folds: mean and *sample* standard deviation (``ddof=1``, the kit's choice: the paper reports a
  standard deviation over 5 folds without saying which). One fold gives std NaN, never 0.

Example:
    >>> import numpy as np
    >>> y = np.array([0, 0, 1, 2, 3, 4, 5, 6])
    >>> probs = np.eye(7)[[0, 1, 1, 2, 3, 4, 5, 6]]
    >>> round(mean_class_recall(y, probs), 4)   # MEL 1/2, the six others 1
    0.9286
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .config import EXECUTION_ONLY
from .constants import CLASS_CODES, DX_CODES, META_FIELDS

__all__ = [
    "RECORD_FILES",
    "RecordError",
    "IncompleteRecordError",
    "labels_to_indices",
    "predicted_classes",
    "mean_class_recall",
    "per_class_recall",
    "confusion",
    "score_predictions",
    "load_record",
    "load_records",
    "filter_records",
    "aggregate",
    "setting_columns",
    "RECALL_COLUMNS",
    "SUPPORT_COLUMNS",
]

#: Files every complete run record holds (``results/runs/<run_id>/``).
RECORD_FILES: tuple[str, ...] = (
    "config.json", "history.csv", "metrics.json", "predictions.csv", "labels.csv", "manifest.json",
)
#: Columns of per-class recall in :func:`load_records` frames, in the official class order.
RECALL_COLUMNS: tuple[str, ...] = tuple(f"recall_{c}" for c in CLASS_CODES)
#: Columns of a records frame with the validation images of each class (``n_val_MEL`` ...).
SUPPORT_COLUMNS: tuple[str, ...] = tuple(f"n_val_{c}" for c in CLASS_CODES)

_N = len(CLASS_CODES)
_CODE_INDEX = {c: i for i, c in enumerate(CLASS_CODES)}
_DX_INDEX = {d: i for i, d in enumerate(DX_CODES)}
# Columns that belong to one fold's run rather than to the setting it evaluates.
_RUN_ONLY = ("run_id", "fold", "path")


class RecordError(ValueError):
    """A run record (or predictions / labels) is not usable; the message says why."""


class IncompleteRecordError(RecordError):
    """A run record folder lacks some of :data:`RECORD_FILES`."""


# --------------------------------------------------------------------------- scoring


def labels_to_indices(labels: Iterable[Any]) -> np.ndarray:
    """Class indices (official order) from class codes, ``dx`` codes or indices.

    Example:
        >>> labels_to_indices(["MEL", "nv", "vasc", 2]).tolist()
        [0, 1, 6, 2]
    """
    if isinstance(labels, np.ndarray) and np.issubdtype(labels.dtype, np.integer):
        arr = labels.astype(np.int64).ravel()
        if arr.size and (arr.min() < 0 or arr.max() >= _N):
            raise RecordError(f"class indices must lie in 0..{_N - 1}; got {arr.min()}..{arr.max()}")
        return arr
    out = []
    for v in labels:
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            i = int(v)
            if not 0 <= i < _N:
                raise RecordError(f"class index {i} is out of range; allowed: 0..{_N - 1}")
            out.append(i)
            continue
        s = str(v).strip()
        if s.upper() in _CODE_INDEX:
            out.append(_CODE_INDEX[s.upper()])
        elif s.isdigit() and int(s) < _N:
            out.append(int(s))
        else:
            raise RecordError(
                f"unknown class label {v!r}; allowed: {', '.join(CLASS_CODES)} (any case) or 0..{_N - 1}")
    return np.asarray(out, dtype=np.int64)


def predicted_classes(probs: Any, tie_tol: float = 0.0) -> np.ndarray:
    """Argmax class per row, ``-1`` where the maximum is shared by 2+ classes (a tie).

    ``probs`` may also be 1-D predicted class indices (``-1`` = no prediction); they pass through.

    Example:
        >>> predicted_classes([[0.5, 0.5, 0, 0, 0, 0, 0], [0.1, 0.9, 0, 0, 0, 0, 0]]).tolist()
        [-1, 1]
    """
    p = np.asarray(probs)
    if p.ndim == 1:
        return p.astype(np.int64)
    p = p.astype(np.float64)
    if p.ndim != 2 or p.shape[1] != _N:
        raise RecordError(f"probabilities must have shape (n, {_N}); got {p.shape}")
    if not np.isfinite(p).all():
        raise RecordError("probabilities contain NaN or infinity")
    if p.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    top = p.max(axis=1, keepdims=True)
    n_top = (p >= top - tie_tol).sum(axis=1)
    pred = p.argmax(axis=1).astype(np.int64)
    pred[n_top > 1] = -1
    return pred


def _y_and_pred(y_true: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y_true).ravel()
    y = labels_to_indices(y_arr if np.issubdtype(y_arr.dtype, np.integer) else y_arr.tolist())
    pred = predicted_classes(probs)
    if len(y) != len(pred):
        raise RecordError(f"{len(y)} labels but {len(pred)} prediction rows")
    return y, pred


def confusion(y_true: Any, probs: Any, include_ties: bool = False) -> np.ndarray:
    """Confusion matrix, rows = true class, columns = predicted class (official order).

    Tied rows (see :func:`predicted_classes`) are left out of the 7 columns; with
    ``include_ties=True`` they are counted in an 8th column, so row sums equal class counts.

    Example:
        >>> cm = confusion([0, 1], [[0.5, 0.5, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0]], include_ties=True)
        >>> cm.shape, int(cm[0, 7]), int(cm[1, 1])
        ((7, 8), 1, 1)
    """
    y, pred = _y_and_pred(y_true, probs)
    cols = np.where(pred < 0, _N, pred)
    cm = np.zeros((_N, _N + 1), dtype=np.int64)
    np.add.at(cm, (y, cols), 1)
    return cm if include_ties else cm[:, :_N]


def per_class_recall(y_true: Any, probs: Any) -> dict[str, float]:
    """Recall of every class by class code; NaN for a class absent from ``y_true``.

    Example:
        >>> r = per_class_recall([0, 0, 1], [[1, 0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0]])
        >>> r["MEL"], r["NV"], r["DF"] != r["DF"]
        (0.5, 1.0, True)
    """
    cm = confusion(y_true, probs, include_ties=True)
    support = cm.sum(axis=1)
    out: dict[str, float] = {}
    for i, code in enumerate(CLASS_CODES):
        out[code] = float(cm[i, i] / support[i]) if support[i] > 0 else float("nan")
    return out


def mean_class_recall(y_true: Any, probs: Any) -> float:
    """Mean class recall (balanced accuracy) of argmax predictions; a tie counts as wrong.

    Example:
        >>> mean_class_recall([0, 1], [[0.6, 0.4, 0, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0, 0, 0]])
        0.5
    """
    rec = np.array(list(per_class_recall(y_true, probs).values()), dtype=float)
    present = ~np.isnan(rec)
    if not present.any():
        return float("nan")
    return float(rec[present].mean())


def _labels_series(labels: Any) -> pd.Series:
    """Labels as a Series: index = image, values = class index."""
    if isinstance(labels, pd.DataFrame):
        df = labels
        if "image" not in df.columns:
            raise RecordError(f"labels need an 'image' column; got columns {list(df.columns)}")
        if "dx" in df.columns:
            s = pd.Series(labels_to_indices(df["dx"].tolist()), index=df["image"].astype(str).tolist())
        elif all(c in df.columns for c in CLASS_CODES):  # official one-hot ground truth
            oh = df[list(CLASS_CODES)].to_numpy(dtype=float)
            if not np.all(np.isclose(oh.sum(axis=1), 1.0)) or not np.all(np.isin(oh, (0.0, 1.0))):
                raise RecordError("one-hot labels must hold exactly one 1.0 per row")
            s = pd.Series(oh.argmax(axis=1), index=df["image"].astype(str).tolist())
        else:
            raise RecordError(f"labels need a 'dx' column or the columns {', '.join(CLASS_CODES)}")
    elif isinstance(labels, pd.Series):
        s = pd.Series(labels_to_indices(labels.tolist()), index=labels.index.astype(str).tolist())
    elif isinstance(labels, Mapping):
        s = pd.Series(labels_to_indices(list(labels.values())), index=[str(k) for k in labels])
    else:
        raise RecordError("labels must be a DataFrame (image,dx), a Series indexed by image, or a mapping")
    if s.index.has_duplicates:
        dup = s.index[s.index.duplicated()].unique()[:5].tolist()
        raise RecordError(f"labels list some images twice, e.g. {dup}")
    return s.astype(np.int64)


def _check_predictions(pred_df: pd.DataFrame) -> pd.DataFrame:
    expected = {"image", *CLASS_CODES}
    cols = set(map(str, pred_df.columns))
    if cols != expected:
        missing, extra = sorted(expected - cols), sorted(cols - expected)
        raise RecordError(
            f"predictions must have exactly the columns image,{','.join(CLASS_CODES)}; "
            f"missing {missing}, unexpected {extra}")
    if pred_df["image"].duplicated().any():
        dup = pred_df.loc[pred_df["image"].duplicated(), "image"].head(5).tolist()
        raise RecordError(f"predictions list some images twice, e.g. {dup}")
    return pred_df


def score_predictions(pred_df: pd.DataFrame, labels: Any) -> dict[str, Any]:
    """Score an ISIC-format predictions frame against labels, matched by image.

    Args:
        pred_df: columns ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC`` (probabilities).
        labels: a frame ``image,dx`` (as ``labels.csv``), a one-hot ISIC ground-truth frame,
            a Series indexed by image, or a mapping image -> class; the two must list the
            same images.

    Returns:
        ``{"mcr", "per_class_recall": {code: recall}, "confusion_matrix": 7x7 list,
        "support": {code: n}, "n", "n_ties"}``.

    Example:
        >>> pred = pd.DataFrame([["a", .9, .1, 0, 0, 0, 0, 0], ["b", .2, .8, 0, 0, 0, 0, 0]],
        ...                     columns=["image", *CLASS_CODES])
        >>> score_predictions(pred, {"a": "mel", "b": "mel"})["mcr"]
        0.5
    """
    pred_df = _check_predictions(pred_df)
    lab = _labels_series(labels)
    images = pred_df["image"].astype(str)
    missing_lab = sorted(set(images) - set(lab.index))
    missing_pred = sorted(set(lab.index) - set(images))
    if missing_lab or missing_pred:
        raise RecordError(
            f"predictions and labels disagree on the images: {len(missing_lab)} predicted image(s) "
            f"without a label (e.g. {missing_lab[:3]}), {len(missing_pred)} labelled image(s) "
            f"without a prediction (e.g. {missing_pred[:3]})")
    y = lab.loc[images.tolist()].to_numpy()
    probs = pred_df[list(CLASS_CODES)].to_numpy(dtype=np.float64)
    pred = predicted_classes(probs)
    cm8 = confusion(y, pred, include_ties=True)
    rec = per_class_recall(y, pred)
    vals = np.array(list(rec.values()))
    return {
        "mcr": float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan"),
        "per_class_recall": rec,
        "confusion_matrix": cm8[:, :_N].tolist(),
        "support": {c: int(n) for c, n in zip(CLASS_CODES, cm8.sum(axis=1))},
        "n": int(len(y)),
        "n_ties": int((pred < 0).sum()),
    }


# --------------------------------------------------------------------------- records


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RecordError(f"{path} is not valid JSON: {e}") from None


def load_record(run_dir: str | Path) -> dict[str, Any]:
    """Read one complete run record folder.

    Returns:
        ``{"run_id", "path", "config", "metrics", "manifest", "history" (DataFrame),
        "predictions" (DataFrame), "labels" (DataFrame image,dx), "scores"}`` where
        ``scores`` is :func:`score_predictions` of the predictions against the labels.

    Raises:
        IncompleteRecordError: the folder lacks some of :data:`RECORD_FILES`.
        RecordError: a file is malformed or predictions and labels do not match.

    Example:
        >>> import tempfile
        >>> try:
        ...     load_record(tempfile.mkdtemp())
        ... except IncompleteRecordError as e:
        ...     print("incomplete")
        incomplete
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise IncompleteRecordError(f"run record {run_dir} does not exist")
    missing = [f for f in RECORD_FILES if not (run_dir / f).is_file()]
    if missing:
        raise IncompleteRecordError(
            f"run record {run_dir} is incomplete: missing {', '.join(missing)} "
            f"(a complete record holds {', '.join(RECORD_FILES)}); rerun it or delete the folder")
    config = _read_json(run_dir / "config.json")
    metrics = _read_json(run_dir / "metrics.json")
    manifest = _read_json(run_dir / "manifest.json")
    listed = manifest.get("files") if isinstance(manifest, dict) else None
    if isinstance(listed, dict):  # the training engine's manifest: sizes of every file, verified on read
        bad = [n for n, info in listed.items()
               if not (run_dir / n).is_file() or (run_dir / n).stat().st_size != info.get("bytes")]
        if bad:
            raise IncompleteRecordError(f"run record {run_dir} does not match its manifest.json ({', '.join(bad)}): "
                                        "it was damaged after it was written; rerun it or delete the folder")
    history = pd.read_csv(run_dir / "history.csv")
    predictions = pd.read_csv(run_dir / "predictions.csv", dtype={"image": str})
    labels = pd.read_csv(run_dir / "labels.csv", dtype={"image": str})
    try:
        scores = score_predictions(predictions, labels)
    except RecordError as e:
        raise RecordError(f"run record {run_dir}: {e}") from None
    return {
        "run_id": config.get("run_id", metrics.get("run_id", run_dir.name)),
        "path": str(run_dir),
        "config": config,
        "metrics": metrics,
        "manifest": manifest,
        "history": history,
        "predictions": predictions,
        "labels": labels,
        "scores": scores,
    }


def _cell(v: Any) -> Any:
    """Config values as hashable DataFrame cells (lists -> tuples, dicts -> JSON)."""
    if isinstance(v, list):
        return tuple(_cell(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return v


def _float(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _meta_key(features: Iterable[str]) -> str:
    fs = set(features)
    return "+".join(f for f in META_FIELDS if f in fs) or "none"


def _record_row(rec: dict[str, Any], source: str) -> dict[str, Any]:
    cfg = rec["config"]
    row: dict[str, Any] = {"run_id": rec["run_id"]}
    for k, v in cfg.items():
        if k != "run_id":
            row[k] = _cell(v)
    feats = cfg.get("meta_features", list(META_FIELDS))
    row["meta_features"] = _meta_key(feats)
    for f in META_FIELDS:
        row[f"meta_{f}"] = f in feats
    m = rec["metrics"]
    s = rec["scores"]
    if source == "predictions":
        row["mcr"] = s["mcr"]
        rec_by_code = s["per_class_recall"]
    else:
        row["mcr"] = _float(m.get("mcr"))
        rec_by_code = m.get("per_class_recall", {})
    for c in CLASS_CODES:
        row[f"recall_{c}"] = _float(rec_by_code.get(c))
    row["mcr_metrics"] = _float(m.get("mcr"))
    row["mcr_predictions"] = s["mcr"]
    row["n_val"] = s["n"]
    for c in CLASS_CODES:  # validation images of each class (from the labels, whatever ``source``)
        row[f"n_val_{c}"] = int(s["support"].get(c, 0))
    row["n_ties"] = s["n_ties"]
    for k in ("epochs_done", "wall_time_s", "device", "images_per_s", "labels_source"):
        row[k] = m.get(k)
    row["n_train"] = m.get("n_train")
    row["path"] = rec["path"]
    return row


_BASE_COLUMNS = [
    "run_id", "backbone", "fusion", "meta_features", "meta_layers", "fold", "n_folds",
    "split_scheme", "data_kind", "mcr", *RECALL_COLUMNS,
]


def load_records(
    runs_dir: str | Path | None = None,
    run_ids: Sequence[str] | None = None,
    *,
    source: str = "predictions",
    on_incomplete: str = "warn",
) -> pd.DataFrame:
    """One row per run record: its config, MCR and per-class recall (fractions 0..1).

    Args:
        runs_dir: folder of run records; default :func:`metanet_utils.paths.runs_dir`.
        run_ids: only these runs (each must exist and be complete); default every record.
        source: ``"predictions"`` (default) scores ``predictions.csv`` against ``labels.csv``
            with the tie rule of this module; ``"metrics"`` takes ``metrics.json`` as written
            by the training engine. Both values are kept (``mcr_predictions``, ``mcr_metrics``).
        on_incomplete: when scanning, what to do with an incomplete folder:
            ``"warn"`` (skip it, with a warning), ``"skip"`` or ``"raise"``.

    ``meta_features`` becomes one string in the fixed field order (``"age+sex+localization"``,
    ``"none"`` for no metadata), with boolean columns ``meta_age``, ``meta_sex``,
    ``meta_localization``; list settings become tuples. ``n_val_<CODE>`` (:data:`SUPPORT_COLUMNS`)
    counts the run's validation images of each class.

    Example:
        >>> import tempfile
        >>> load_records(tempfile.mkdtemp()).empty
        True
    """
    if source not in ("predictions", "metrics"):
        raise ValueError(f"source={source!r} is not allowed; choose 'predictions' or 'metrics'")
    if on_incomplete not in ("warn", "skip", "raise"):
        raise ValueError(f"on_incomplete={on_incomplete!r} is not allowed; choose 'warn', 'skip' or 'raise'")
    if runs_dir is None:
        from .paths import runs_dir as _runs_dir

        runs_dir = _runs_dir()
    runs_dir = Path(runs_dir)
    rows: list[dict[str, Any]] = []
    if run_ids is not None:
        for rid in run_ids:
            rows.append(_record_row(load_record(runs_dir / rid), source))
    elif runs_dir.is_dir():
        skipped = []
        for d in sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                rows.append(_record_row(load_record(d), source))
            except IncompleteRecordError:
                if on_incomplete == "raise":
                    raise
                skipped.append(d.name)
        if skipped and on_incomplete == "warn":
            warnings.warn(f"skipped {len(skipped)} incomplete run record(s) in {runs_dir}: "
                          f"{', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}", stacklevel=2)
    df = pd.DataFrame(rows)
    for c in _BASE_COLUMNS:
        if c not in df.columns:
            df[c] = pd.Series(dtype=float if c.startswith(("mcr", "recall_")) else object)
    if len(df):
        diff = (df["mcr_metrics"] - df["mcr_predictions"]).abs()
        bad = df.loc[diff > 1e-6, "run_id"].tolist()
        if bad:
            warnings.warn(f"{len(bad)} run(s) report an MCR in metrics.json that differs from the one "
                          f"scored from predictions.csv (e.g. {bad[:3]}); column 'mcr' uses {source}",
                          stacklevel=2)
        df = df.sort_values([c for c in ("backbone", "fusion", "meta_features", "meta_layers", "fold")
                             if c in df.columns], kind="stable").reset_index(drop=True)
    return df


def filter_records(records: pd.DataFrame, **criteria: Any) -> pd.DataFrame:
    """Rows whose columns equal the given values (a list/tuple/set value means "one of").

    Example:
        >>> df = pd.DataFrame({"fusion": ["none", "metanet"], "mcr": [0.5, 0.6]})
        >>> filter_records(df, fusion="metanet")["mcr"].tolist()
        [0.6]
    """
    mask = pd.Series(True, index=records.index)
    for col, want in criteria.items():
        if col not in records.columns:
            raise KeyError(f"records have no column {col!r}; columns: {', '.join(map(str, records.columns))}")
        holds_tuples = records[col].map(lambda v: isinstance(v, tuple)).any()
        if isinstance(want, (list, set, frozenset)) or (isinstance(want, tuple) and not holds_tuples):
            mask &= records[col].isin(list(want))
        else:
            mask &= records[col].map(lambda v, w=want: v == w).astype(bool)
    return records.loc[mask]


_OUTCOME_COLUMNS = frozenset({
    "mcr", "mcr_metrics", "mcr_predictions", "n_val", "n_train", "n_ties", "epochs_done", "wall_time_s",
    "device", "images_per_s", "labels_source", *RECALL_COLUMNS, *SUPPORT_COLUMNS,
    *(f"meta_{f}" for f in META_FIELDS),
})


def setting_columns(records_df: pd.DataFrame) -> list[str]:
    """The columns of a records frame that describe a setting: all but the run's own
    (``run_id``, ``fold``, ``path``), its outcomes (MCR, recall, timings), derived flags and the
    execution-only settings (:data:`~metanet_utils.config.EXECUTION_ONLY`: CUDA graphs, checkpoint
    interval), which are not part of ``run_id`` either: the folds of one grid may differ in them.

    Runs that agree on these columns differ only in the fold and may be averaged.

    Example:
        >>> setting_columns(pd.DataFrame(columns=["run_id", "backbone", "fold", "mcr", "epochs", "cuda_graphs"]))
        ['backbone', 'epochs']
    """
    return [c for c in records_df.columns
            if c not in _RUN_ONLY and c not in _OUTCOME_COLUMNS and c not in EXECUTION_ONLY]


def aggregate(
    records_df: pd.DataFrame,
    by: Sequence[str] | None = None,
    values: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Mean, sample standard deviation (``ddof=1``) and number of folds per group.

    Args:
        records_df: one row per run, as :func:`load_records` returns.
        by: grouping columns; default every setting except the fold (so runs that differ
            in anything but the fold are never averaged together).
        values: columns to summarise; default ``mcr`` and the ``recall_<CODE>`` columns.

    Returns:
        One row per group: the ``by`` columns, ``n`` (folds), ``folds`` (e.g. ``"0,1,2,3,4"``),
        ``n_expected`` (the runs' ``n_folds`` when known) and ``<value>_mean``, ``<value>_std``.
        A group with one fold has std NaN. The same fold twice in a group raises.

    Example:
        >>> df = pd.DataFrame({"fusion": ["none"] * 3, "fold": [0, 1, 2], "mcr": [0.7, 0.8, 0.9]})
        >>> out = aggregate(df, by=["fusion"], values=["mcr"])
        >>> float(round(out.loc[0, "mcr_mean"], 3)), float(round(out.loc[0, "mcr_std"], 3)), int(out.loc[0, "n"])
        (0.8, 0.1, 3)
    """
    if values is None:
        values = [c for c in ("mcr", *RECALL_COLUMNS) if c in records_df.columns]
    values = list(values)
    by = setting_columns(records_df) if by is None else list(by)
    out_cols = [*by, "n", "folds", "n_expected", *(f"{v}_{s}" for v in values for s in ("mean", "std"))]
    if records_df.empty:
        return pd.DataFrame(columns=out_cols)
    rows = []
    for key, g in records_df.groupby(by, dropna=False, sort=True) if by else [((), records_df)]:
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(by, key))
        if "fold" in g.columns:
            folds = g["fold"].tolist()
            if len(set(folds)) != len(folds):
                raise ValueError(
                    f"group {row} holds the same fold more than once (folds {sorted(folds)}); "
                    f"add the column that tells these runs apart to by=")
            row["folds"] = ",".join(str(int(f)) for f in sorted(folds))
        else:
            row["folds"] = ""
        row["n"] = int(len(g))
        row["n_expected"] = (float(g["n_folds"].max()) if "n_folds" in g.columns
                             and g["n_folds"].notna().any() else float("nan"))
        for v in values:
            x = pd.to_numeric(g[v], errors="coerce").to_numpy(dtype=float)
            x = x[~np.isnan(x)]
            row[f"{v}_mean"] = float(x.mean()) if len(x) else float("nan")
            row[f"{v}_std"] = float(x.std(ddof=1)) if len(x) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows, columns=out_cols)

