"""Significance tests for paired cross-validation folds, on top of :mod:`scipy.stats`, reported honestly.

The paper reports "p-values are smaller than 0.05 with Wilcoxon's Sign Rank Test" without saying what it
paired. The kit reads it as pairing the 5 folds' MCRs; then the *exact* two-sided p-value cannot go below
``2 / 2**5 = 0.0625`` (notebook 05 counts the 32 sign patterns). Beside it: the one-sided exact test, the
normal approximation, pooling over backbones, and the Nadeau-Bengio corrected t-test (folds share training
data, so the plain paired t-test is too liberal), with Holm's adjustment over backbones.

Example:
    >>> min_exact_pvalue(5), min_exact_pvalue(5, "greater")
    (0.0625, 0.03125)
    >>> float(wilcoxon([0.88, 0.87, 0.89, 0.86, 0.90], [0.85, 0.86, 0.85, 0.85, 0.86]).pvalue)
    0.0625
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats as st

__all__ = ["WilcoxonResult", "TTestResult", "differences", "wilcoxon", "min_exact_pvalue", "corrected_ttest", "holm",
           "paired_values", "compare"]

MAX_ENUMERATED = 16  #: most non-zero pairs whose 2**n sign patterns ``wilcoxon`` enumerates when ranks tie


@dataclass(frozen=True)
class WilcoxonResult:
    """scipy's ``statistic`` and ``pvalue``, the pairs ``n`` (``n_zero`` of them with a zero difference,
    dropped before ranking as scipy's default ``zero_method="wilcox"``) and the ``method`` actually used."""

    statistic: float
    pvalue: float
    n: int
    n_zero: int
    method: str


def differences(a: Any, b: Any | None = None) -> np.ndarray:
    """``a - b`` as floats rounded to 12 decimals, so floating noise (``0.1 + 0.2 - 0.3``) is a zero or a tie.

    Example:
        >>> differences([0.3, 0.86], [0.1 + 0.2, 0.85]).tolist()
        [0.0, 0.01]
    """
    d = np.asarray(a, dtype=float).ravel()
    if b is not None:
        other = np.asarray(b, dtype=float).ravel()
        if d.shape != other.shape:
            raise ValueError(f"paired samples need equal lengths; got {d.size} and {other.size}")
        d = d - other
    if np.isnan(d).any():
        raise ValueError("differences contain NaN; drop unpaired folds first")
    return np.round(d, 12) + 0.0  # + 0.0 turns -0.0 into 0.0


def min_exact_pvalue(n: int, alternative: str = "two-sided") -> float:
    """Smallest exact Wilcoxon p-value with ``n`` non-zero pairs: all of one sign, ``1/2**n`` per side.

    Example:
        >>> min_exact_pvalue(5), min_exact_pvalue(5, "less"), min_exact_pvalue(30) < 1e-8
        (0.0625, 0.03125, True)
    """
    return min(1.0, (2.0 if alternative == "two-sided" else 1.0) * 0.5 ** n)


def wilcoxon(a: Any, b: Any | None = None, alternative: str = "two-sided", method: str = "exact") -> WilcoxonResult:
    """Wilcoxon signed-rank test of paired values (``d = a - b``; or the differences in ``a``): scipy's.

    Args:
        alternative: ``"two-sided"``, ``"greater"`` (a tends to exceed b) or ``"less"``.
        method: scipy's ``"exact"`` (default), ``"asymptotic"`` (normal approximation, no continuity
            correction) or ``"auto"``. scipy's exact distribution assumes untied ranks, so with tied
            |differences| ``"exact"`` enumerates all sign patterns instead (``PermutationMethod``), or, past
            :data:`MAX_ENUMERATED` pairs, takes the tie-corrected normal approximation; ``method`` says which.

    Example:
        >>> r = wilcoxon([1, 2, 3, 4, 5])                 # five folds, all in favour of a
        >>> float(r.pvalue), r.n, r.method
        (0.0625, 5, 'exact')
        >>> round(float(wilcoxon([1, 2, 3, 4, 5], method="asymptotic").pvalue), 4)
        0.0431
    """
    d = differences(a, b)
    if d.size == 0:
        raise ValueError("wilcoxon needs at least one pair")
    nonzero, how = d[d != 0], method  # zeros are dropped before ranking, as scipy's zero_method="wilcox"
    if method == "exact" and np.unique(np.abs(nonzero)).size < nonzero.size:  # tied |differences|
        enumerate_all = nonzero.size <= MAX_ENUMERATED
        how = st.PermutationMethod(n_resamples=2 ** nonzero.size) if enumerate_all else "asymptotic"
        method = "exact (all sign patterns)" if enumerate_all else "asymptotic"
    if nonzero.size == 0:  # no evidence either way
        return WilcoxonResult(0.0, 1.0, d.size, d.size, method)
    r = st.wilcoxon(nonzero, alternative=alternative, method=how)
    return WilcoxonResult(float(r.statistic), float(r.pvalue), d.size, d.size - nonzero.size, method)


@dataclass(frozen=True)
class TTestResult:
    """Result of :func:`corrected_ttest`: ``statistic``, two-sided ``pvalue``, ``df`` = k - 1."""

    statistic: float
    pvalue: float
    df: int


def corrected_ttest(a: Any, b: Any | None = None, n_train: float = 4.0, n_test: float = 1.0) -> TTestResult:
    """Nadeau-Bengio corrected resampled t-test (two-sided) on paired per-fold scores.

    ``t = mean(d) / sqrt((1/k + n_test/n_train) * var(d))`` with the sample variance of the k differences
    and k - 1 degrees of freedom (Nadeau & Bengio 2003). Only the ratio ``n_test/n_train`` matters; k-fold
    cross-validation has ``1/(k-1)`` (the defaults: 5 folds). With ``n_test/n_train -> 0`` it is the plain
    paired t-test.

    Example:
        >>> r = corrected_ttest([0.02, 0.01, 0.03, 0.02, 0.02], n_train=8012, n_test=2003)
        >>> round(r.statistic, 3), r.df                   # 0.02 / sqrt((1/5 + 2003/8012) * 5e-5)
        (4.216, 4)
    """
    d = differences(a, b)
    k = int(d.size)
    if k < 2:
        raise ValueError("the corrected t-test needs at least 2 paired values")
    with np.errstate(divide="ignore", invalid="ignore"):  # no variance: t = +-inf (p = 0), or nan if d = 0
        t = float(np.float64(d.mean()) / np.sqrt((1.0 / k + n_test / n_train) * d.var(ddof=1)))
    return TTestResult(t, float(np.minimum(1.0, 2.0 * st.t(k - 1).sf(abs(t)))), k - 1)


def holm(pvalues: Any) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values in the input order; NaN stays NaN and is not counted as a test.

    Example:
        >>> holm([0.01, 0.04, 0.03, 0.005]).round(4).tolist()
        [0.03, 0.06, 0.06, 0.02]
    """
    p = np.asarray(pvalues, dtype=float).ravel()
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    out[order] = np.maximum.accumulate(np.minimum(1.0, (ok.size - np.arange(ok.size)) * p[order]))
    return out


def paired_values(df: pd.DataFrame, a: Any, b: Any, *, column: str = "fusion", value: str = "mcr",
                  pair_on: Sequence[str] = ("backbone", "fold")) -> pd.DataFrame:
    """The ``value`` of variants ``a`` and ``b`` (of ``column``) side by side, one row per pair.

    Columns: ``pair_on``, ``a``, ``b``, ``diff`` (``a - b``); pairs with one side missing are left out.

    Raises:
        ValueError: a variant has two rows for one pair (filter the records to one setting first).

    Example:
        >>> df = pd.DataFrame({"backbone": ["r"] * 4, "fold": [0, 1, 0, 1],
        ...                    "fusion": ["metanet", "metanet", "none", "none"], "mcr": [.8, .9, .7, .8]})
        >>> paired_values(df, "metanet", "none")["diff"].round(6).tolist()
        [0.1, 0.1]
    """
    keys = [*pair_on, column]
    part = df.loc[df[column].isin([a, b]), [*keys, value]]
    twice = part.duplicated(keys, keep=False)
    if twice.any():
        example = part.loc[twice, keys].drop_duplicates().head(3).to_dict("records")
        raise ValueError(f"several runs for the same pair, e.g. {example}; filter the records to one setting "
                         f"first (e.g. meta_features, meta_layers, split_scheme)")
    wide = part.pivot(index=list(pair_on), columns=column, values=value).reindex(columns=[a, b])
    wide.columns = ["a", "b"]
    out = wide.dropna().sort_index().reset_index()
    return out.assign(diff=out["a"] - out["b"])


def _test_train_ratio(records: pd.DataFrame, k: int) -> float:
    """``n_test / n_train`` of a group's runs from their records (``n_val``, ``n_train``), else k-fold's 1/(k-1)."""
    if {"n_train", "n_val"} <= set(records.columns):
        ratio = pd.to_numeric(records["n_val"]).mean() / pd.to_numeric(records["n_train"]).mean()
        if ratio > 0:
            return float(ratio)
    return 1.0 / (k - 1)


def compare(records: pd.DataFrame, a: Any = "metanet", b: Any = "none", *, column: str = "fusion",
            by: str = "backbone", value: str = "mcr") -> pd.DataFrame:
    """``a`` against ``b`` per group (default: per backbone, its folds paired), then pooled over groups.

    One row per group, then one ``<by> = "pooled"``: ``n`` pairs, ``mean_diff``, ``wins`` (pairs with
    a > b), Wilcoxon p-values (exact two-sided ``p_exact``, exact one-sided "a > b" ``p_exact_greater``,
    normal-approximation two-sided ``p_approx``), the corrected t-test ``p_ttest`` (per group only), their
    Holm adjustments over the groups (``*_holm``) and the smallest exact two-sided p ``min_p_exact``.

    Example:
        >>> df = pd.DataFrame({"backbone": ["r"] * 10, "fold": list(range(5)) * 2,
        ...                    "fusion": ["metanet"] * 5 + ["none"] * 5,
        ...                    "mcr": [.81, .82, .83, .84, .85, .80, .80, .80, .80, .80]})
        >>> row = compare(df).iloc[0]
        >>> row["backbone"], int(row["n"]), float(row["p_exact"]), float(row["p_exact_greater"])
        ('r', 5, 0.0625, 0.03125)
    """
    pairs = paired_values(records, a, b, column=column, value=value, pair_on=(by, "fold"))

    def row(name: Any, d: np.ndarray) -> dict[str, Any]:
        return {by: name, "a": a, "b": b, "n": d.size, "mean_diff": d.mean(), "wins": int((d > 0).sum()),
                "p_exact": wilcoxon(d).pvalue, "p_exact_greater": wilcoxon(d, alternative="greater").pvalue,
                "p_approx": wilcoxon(d, method="asymptotic").pvalue,
                "min_p_exact": min_exact_pvalue(int((d != 0).sum()))}

    rows = []
    for name, g in pairs.groupby(by, sort=True):
        d, p_ttest = differences(g["diff"]), np.nan
        if d.size >= 2:  # the corrected t-test is defined for the folds of one cross-validation
            ratio = _test_train_ratio(records[(records[by] == name) & records[column].isin([a, b])], d.size)
            p_ttest = corrected_ttest(d, n_train=1.0, n_test=ratio).pvalue
        rows.append({**row(name, d), "p_ttest": p_ttest})
    tests = ["p_exact", "p_exact_greater", "p_approx", "p_ttest"]
    out = pd.DataFrame(rows, columns=[by, "a", "b", "n", "mean_diff", "wins", *tests, "min_p_exact"])
    for c in tests:
        out[f"{c}_holm"] = holm(out[c])
    if len(pairs):  # pooled: the folds of one group share data, so these pairs are not independent
        out = pd.concat([out, pd.DataFrame([row("pooled", differences(pairs["diff"]))])], ignore_index=True)
    return out
