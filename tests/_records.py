"""Fake run records for the analysis tests (evaluate, stats, tables).

Writes the same files as the training engine (``config.json``, ``history.csv``,
``metrics.json``, ``predictions.csv``, ``labels.csv``, ``manifest.json``) with chosen
predictions, and computes the expected scores with plain Python loops, independently of
``metanet_utils.evaluate``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from metanet_utils.config import RunConfig
from metanet_utils.constants import CLASS_CODES

CODES = list(CLASS_CODES)


def probs_for(y_true: Sequence[int], y_pred: Sequence[int]) -> np.ndarray:
    """Probabilities whose argmax is ``y_pred``; ``-1`` makes a tie between the true class
    and the next one (0.375 each), which the ISIC rule counts as wrong."""
    n = len(y_true)
    p = np.full((n, 7), 0.05)
    for i, (t, q) in enumerate(zip(y_true, y_pred)):
        if q < 0:  # tie: the true class shares the maximum with another class
            other = (t + 1) % 7
            p[i, t] = p[i, other] = 0.375
        else:
            p[i, q] = 0.7
    return p


def exact_recall_preds(y_true: Sequence[int], n_correct: dict[int, int]) -> list[int]:
    """Predictions that get exactly ``n_correct[c]`` images of class c right (the rest go to c+1)."""
    seen: dict[int, int] = {}
    out = []
    for t in y_true:
        k = seen.get(t, 0)
        seen[t] = k + 1
        out.append(t if k < n_correct.get(t, 0) else (t + 1) % 7)
    return out


def expected_scores(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, Any]:
    """MCR and per-class recall by hand (a prediction of -1 is a tie: wrong)."""
    recall = {}
    for c, code in enumerate(CODES):
        idx = [i for i, t in enumerate(y_true) if t == c]
        if idx:
            recall[code] = sum(1 for i in idx if y_pred[i] == c) / len(idx)
        else:
            recall[code] = float("nan")
    present = [v for v in recall.values() if v == v]
    return {"mcr": sum(present) / len(present), "per_class_recall": recall}


def write_fake_run(
    runs_dir: str | Path,
    config_dict: dict[str, Any],
    probs: Any,
    labels: Sequence[Any],
    images: Sequence[str] | None = None,
    *,
    metrics: dict[str, Any] | None = None,
    omit: Sequence[str] = (),
) -> Path:
    """Write one complete run record (minus the files in ``omit``) and return its folder.

    ``config_dict`` holds RunConfig fields (``backbone`` at least); ``labels`` are class indices,
    codes or dx strings; ``metrics`` overrides fields of ``metrics.json``.
    """
    cfg = RunConfig(**config_dict)
    run_id = cfg.run_id
    d = Path(runs_dir) / run_id
    d.mkdir(parents=True, exist_ok=True)
    probs = np.asarray(probs, dtype=float)
    n = len(labels)
    if images is None:
        images = [f"ISIC_{cfg.fold}{i:06d}" for i in range(n)]
    y = [CODES.index(str(v).upper()) if not isinstance(v, (int, np.integer)) else int(v) for v in labels]
    preds = []
    for row in probs:
        m = row.max()
        top = [j for j in range(7) if row[j] == m]
        preds.append(top[0] if len(top) == 1 else -1)
    sc = expected_scores(y, preds)
    files: dict[str, str] = {}
    files["config.json"] = json.dumps({**cfg.to_dict(), "run_id": run_id}, indent=2)
    files["history.csv"] = ("epoch,lr,train_loss,val_loss,val_mcr,epoch_time_s,images_per_s\n"
                            f"1,0.001,1.5,1.4,{sc['mcr']},1.0,100.0\n")
    cm = [[0] * 7 for _ in range(7)]
    for t, q in zip(y, preds):
        if q >= 0:
            cm[t][q] += 1
    m = {"run_id": run_id, "mcr": sc["mcr"], "per_class_recall": sc["per_class_recall"],
         "confusion_matrix": cm, "epochs_done": cfg.epochs, "wall_time_s": 1.0, "device": "cpu",
         "images_per_s": 100.0, "n_val": n, "n_train": 4 * n, "labels_source": "fake"}
    m.update(metrics or {})
    files["metrics.json"] = json.dumps(m, indent=2).replace("NaN", "null")
    lines = ["image," + ",".join(CODES)]
    for img, row in zip(images, probs):
        lines.append(img + "," + ",".join(repr(float(v)) for v in row))
    files["predictions.csv"] = "\n".join(lines) + "\n"
    files["labels.csv"] = "image,dx\n" + "".join(f"{img},{CODES[t].lower()}\n" for img, t in zip(images, y))
    files["checkpoint.pt"] = ""  # the trainer keeps its last checkpoint in the record
    files["manifest.json"] = json.dumps({"run_id": run_id, "files": {  # the training engine's format
        n: {"bytes": len(t.encode())} for n, t in files.items() if n not in omit}})
    for name, text in files.items():
        if name not in omit:
            (d / name).write_text(text)
    return d


def fake_fold_run(
    runs_dir: str | Path,
    config_dict: dict[str, Any],
    n_correct: dict[int, int],
    per_class: int = 10,
) -> dict[str, Any]:
    """A run whose validation fold has ``per_class`` images of each class and exactly
    ``n_correct[c]`` right for class c. Returns the expected scores (by hand) and the folder."""
    y = [c for c in range(7) for _ in range(per_class)]
    pred = exact_recall_preds(y, n_correct)
    path = write_fake_run(runs_dir, config_dict, probs_for(y, pred), y)
    return {"path": path, **expected_scores(y, pred)}
