"""Significance tests for paired cross-validation folds, on top of :mod:`scipy.stats`, reported honestly.

The paper's "p < 0.05 with Wilcoxon's Sign Rank Test" over 5 paired folds: the exact two-sided p-value cannot go below
2 / 2**5 = 0.0625 (notebook 05). Beside it: the one-sided test, the normal approximation, pooling over backbones and
the Nadeau-Bengio corrected t-test (folds share training data), with Holm.

Example:
    >>> r = wilcoxon([0.88, 0.87, 0.89, 0.86, 0.90], [0.87, 0.85, 0.86, 0.82, 0.85])  # five folds, all a > b
    >>> float(r.pvalue), r.method, min_exact_pvalue(5), min_exact_pvalue(5, "greater")
    (0.0625, 'exact', 0.0625, 0.03125)
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats as st

MAX_ENUMERATED = 16  #: most non-zero pairs whose sign patterns ``wilcoxon`` enumerates when ranks tie
WilcoxonResult = namedtuple("WilcoxonResult", "statistic pvalue n n_zero method")
TTestResult = namedtuple("TTestResult", "statistic pvalue df")


def differences(a: Any, b: Any | None = None) -> np.ndarray:
    """``a - b`` rounded to 12 decimals: floating noise is a zero or a tie."""
    d = np.asarray(a, dtype=float).ravel()
    if b is not None:
        other = np.asarray(b, dtype=float).ravel()
        if d.shape != other.shape:
            raise ValueError(f"paired samples need equal lengths; got {d.size} and {other.size}")
        d = d - other
    if np.isnan(d).any():
        raise ValueError("differences contain NaN; drop unpaired folds first")
    return np.round(d, 12) + 0.0  # -0.0 -> 0.0


def min_exact_pvalue(n: int, alternative: str = "two-sided") -> float:
    """Smallest exact Wilcoxon p-value with ``n`` non-zero pairs: ``1/2**n`` per side."""
    return min(1.0, (2.0 if alternative == "two-sided" else 1.0) * 0.5 ** n)


def wilcoxon(a: Any, b: Any | None = None, alternative: str = "two-sided", method: str = "exact") -> WilcoxonResult:
    """scipy's Wilcoxon signed-rank test of ``a - b`` (or of ``a``), zeros dropped; with ties ``"exact"`` counts
    every sign pattern (scipy's table assumes none), past :data:`MAX_ENUMERATED` pairs the normal approximation."""
    d = differences(a, b)
    if d.size == 0:
        raise ValueError("wilcoxon needs at least one pair")
    nonzero, how = d[d != 0], method
    if method == "exact" and np.unique(np.abs(nonzero)).size < nonzero.size:
        enumerate_all = nonzero.size <= MAX_ENUMERATED
        how = st.PermutationMethod(n_resamples=2 ** nonzero.size) if enumerate_all else "asymptotic"
        method = "exact (all sign patterns)" if enumerate_all else "asymptotic"
    if nonzero.size == 0:
        return WilcoxonResult(0.0, 1.0, d.size, d.size, method)
    r = st.wilcoxon(nonzero, alternative=alternative, method=how)
    return WilcoxonResult(float(r.statistic), float(r.pvalue), d.size, d.size - nonzero.size, method)


def corrected_ttest(a: Any, b: Any | None = None, n_train: float = 4.0, n_test: float = 1.0) -> TTestResult:
    """Nadeau-Bengio corrected t-test (two-sided): ``t = mean(d) / sqrt((1/k + n_test/n_train) var(d))``, k - 1
    degrees of freedom."""
    d = differences(a, b)
    k = int(d.size)
    if k < 2:
        raise ValueError("the corrected t-test needs at least 2 paired values")
    with np.errstate(divide="ignore", invalid="ignore"):  # no variance: t = +-inf (p = 0), or nan if d = 0
        t = float(np.float64(d.mean()) / np.sqrt((1.0 / k + n_test / n_train) * d.var(ddof=1)))
    return TTestResult(t, float(np.minimum(1.0, 2.0 * st.t(k - 1).sf(abs(t)))), k - 1)


def holm(pvalues: Any) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values in the input order; a NaN stays NaN, not counted as a test."""
    p = np.asarray(pvalues, dtype=float).ravel()
    out, ok = np.full_like(p, np.nan), np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    out[order] = np.maximum.accumulate(np.minimum(1.0, (ok.size - np.arange(ok.size)) * p[order]))
    return out


def paired_values(df: pd.DataFrame, a: Any, b: Any, *, column: str = "fusion", value: str = "mcr",
                  pair_on: Sequence[str] = ("backbone", "fold")) -> pd.DataFrame:
    """``value`` of variants ``a`` and ``b`` of ``column`` side by side: ``*pair_on, a, b, diff``, a row per pair."""
    keys = [*pair_on, column]
    part = df.loc[df[column].isin([a, b]), [*keys, value]]
    twice = part.duplicated(keys, keep=False)
    if twice.any():
        example = part.loc[twice, keys].drop_duplicates().head(3).to_dict("records")
        raise ValueError(f"several runs for the same pair, e.g. {example}; filter the records to one setting "
                         f"first (e.g. meta_features, meta_layers, split_scheme)")
    wide = part.pivot(index=list(pair_on), columns=column, values=value).reindex(columns=[a, b])
    out = wide.set_axis(["a", "b"], axis=1).dropna().sort_index().reset_index()
    return out.assign(diff=out["a"] - out["b"])


def compare(records: pd.DataFrame, a: Any = "metanet", b: Any = "none", *, column: str = "fusion",
            by: str = "backbone", value: str = "mcr") -> pd.DataFrame:
    """``a`` against ``b`` per group (its folds paired), then a ``"pooled"`` row: ``n``, ``mean_diff``, ``wins``,
    Wilcoxon ``p_exact``, ``p_exact_greater``, ``p_approx``, corrected t-test ``p_ttest``, Holm over the groups
    (``*_holm``) and ``min_p_exact``."""
    pairs = paired_values(records, a, b, column=column, value=value, pair_on=(by, "fold"))

    def row(name: Any, d: np.ndarray, p_ttest: float = np.nan) -> dict[str, Any]:
        return {by: name, "a": a, "b": b, "n": d.size, "mean_diff": d.mean(), "wins": int((d > 0).sum()),
                "p_exact": wilcoxon(d).pvalue, "p_exact_greater": wilcoxon(d, alternative="greater").pvalue,
                "p_approx": wilcoxon(d, method="asymptotic").pvalue, "p_ttest": p_ttest,
                "min_p_exact": min_exact_pvalue(int((d != 0).sum()))}

    rows = []
    for name, g in pairs.groupby(by, sort=True):
        d, runs = differences(g["diff"]), records[(records[by] == name) & records[column].isin([a, b])]
        n = runs.reindex(columns=["n_val", "n_train"]).apply(pd.to_numeric).mean()
        ratio = n["n_val"] / n["n_train"]  # n_test / n_train of these runs, else k-fold's 1 / (k - 1)
        ratio = ratio if ratio > 0 else 1.0 / max(d.size - 1, 1)
        rows.append(row(name, d, corrected_ttest(d, n_train=1.0, n_test=ratio).pvalue if d.size >= 2 else np.nan))
    tests = ["p_exact", "p_exact_greater", "p_approx", "p_ttest"]
    out = pd.DataFrame(rows, columns=[by, "a", "b", "n", "mean_diff", "wins", *tests, "min_p_exact"])
    out = out.assign(**{f"{c}_holm": holm(out[c]) for c in tests})
    if len(pairs):  # pooled: the folds of one group share data, so these pairs are not independent
        out = pd.concat([out, pd.DataFrame([row("pooled", differences(pairs["diff"]))])], ignore_index=True)
    return out
