"""Significance tests for paired cross-validation folds, reported honestly.

The paper reports "p-values are smaller than 0.05 with Wilcoxon's Sign Rank Test" for every
backbone without saying what it paired. The kit reads it as pairing the 5 folds' MCRs; if so,
the *exact* two-sided p-value cannot go below ``2 / 2**5 = 0.0625`` (one-sided ``0.03125``);
the normal approximation gives 0.0431 when all five folds agree, so p < 0.05 needs a one-sided
exact test, the normal approximation, or pooling. This module computes each of these, says
which one it used, and offers better-suited alternatives: pooling pairs over backbones, and
the Nadeau-Bengio corrected resampled t-test (cross-validation folds share training data, so
the plain paired t-test is too liberal).

Example:
    >>> min_exact_pvalue(5), min_exact_pvalue(5, "greater")
    (0.0625, 0.03125)
    >>> round(wilcoxon([0.88, 0.87, 0.89, 0.86, 0.90], [0.85, 0.86, 0.85, 0.85, 0.86]).pvalue, 4)
    0.0625
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats as _st

__all__ = [
    "WilcoxonResult",
    "TTestResult",
    "wilcoxon",
    "paired_values",
    "pooled_wilcoxon",
    "corrected_ttest",
    "holm",
    "min_exact_pvalue",
    "min_approx_pvalue",
    "compare",
]

_ALTERNATIVES = ("two-sided", "greater", "less")
_ZERO_METHODS = ("wilcox", "pratt", "zsplit")
_METHODS = ("exact", "approx", "asymptotic", "auto")


@dataclass(frozen=True)
class WilcoxonResult:
    """Result of :func:`wilcoxon`.

    ``statistic`` follows scipy: for a two-sided test the smaller of the rank sums
    ``r_plus`` / ``r_minus``, otherwise ``r_plus``. ``n`` counts all pairs, ``n_zero`` the
    pairs with a zero difference; ``method`` is ``"exact"`` or ``"approx"``; ``note``
    states in words how zeros and ties were handled and the smallest p-value attainable.
    """

    statistic: float
    pvalue: float
    n: int
    n_zero: int
    method: str
    note: str
    alternative: str = "two-sided"
    zero_method: str = "wilcox"
    r_plus: float = float("nan")
    r_minus: float = float("nan")
    zstatistic: float = float("nan")
    min_pvalue: float = float("nan")
    mean_difference: float = float("nan")


@dataclass(frozen=True)
class TTestResult:
    """Result of :func:`corrected_ttest` (``df`` = k - 1 degrees of freedom)."""

    statistic: float
    pvalue: float
    df: int
    k: int
    mean_difference: float
    std_difference: float
    correction: float
    alternative: str
    note: str = field(default="")


def _check(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def _differences(a: Any, b: Any | None, decimals: int | None) -> np.ndarray:
    x = np.asarray(a, dtype=float).ravel()
    if b is not None:
        y = np.asarray(b, dtype=float).ravel()
        if x.shape != y.shape:
            raise ValueError(f"paired samples need equal lengths; got {len(x)} and {len(y)}")
        x = x - y
    if np.isnan(x).any():
        raise ValueError("differences contain NaN; drop unpaired folds first")
    if decimals is not None:
        x = np.round(x, decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    return x


def min_exact_pvalue(n: int, alternative: str = "two-sided") -> float:
    """Smallest p-value the exact Wilcoxon signed-rank test can give with ``n`` non-zero pairs.

    Reached when all ``n`` differences have the same sign: one-sided ``1 / 2**n``,
    two-sided ``2 / 2**n`` (capped at 1).

    Example:
        >>> min_exact_pvalue(5), min_exact_pvalue(5, alternative="greater"), min_exact_pvalue(6)
        (0.0625, 0.03125, 0.03125)
    """
    _check("alternative", alternative, _ALTERNATIVES)
    if n < 0:
        raise ValueError("n must be >= 0")
    one = 0.5 ** n
    return min(1.0, 2.0 * one) if alternative == "two-sided" else one


def min_approx_pvalue(n: int, alternative: str = "two-sided", correction: bool = False) -> float:
    """Normal-approximation p-value of the Wilcoxon test when all ``n`` pairs agree in sign.

    ``z = (n(n+1)/2 - n(n+1)/4) / sqrt(n(n+1)(2n+1)/24)``; for n = 5 that is
    ``(15 - 7.5) / sqrt(13.75) = 2.023`` and a two-sided p of 0.0431 (scipy's
    ``method="asymptotic"`` without continuity correction).

    Example:
        >>> round(min_approx_pvalue(5), 4), round(min_approx_pvalue(5, "greater"), 4)
        (0.0431, 0.0216)
    """
    _check("alternative", alternative, _ALTERNATIVES)
    if n < 1:
        return 1.0
    mean = n * (n + 1) / 4.0
    se = math.sqrt(n * (n + 1) * (2 * n + 1) / 24.0)
    z = (n * (n + 1) / 2.0 - mean - (0.5 if correction else 0.0)) / se
    return float(min(1.0, 2.0 * _st.norm.sf(z))) if alternative == "two-sided" else float(_st.norm.sf(z))


def _exact_tail(ranks: np.ndarray, r_plus_nonzero: float) -> tuple[float, float]:
    """P(S >= s) and P(S <= s) for S = sum of ``ranks`` each counted with probability 1/2.

    Ranks are multiples of 1/2 (mid-ranks), so doubled ranks are integers and the
    distribution is built exactly by dynamic programming (sizes up to n(n+1)).
    """
    r2 = np.rint(2.0 * ranks).astype(np.int64)
    total = int(r2.sum())
    dist = np.zeros(total + 1, dtype=np.float64)
    dist[0] = 1.0
    top = 0
    for r in r2:
        new = dist.copy() * 0.5
        new[r: top + r + 1] += 0.5 * dist[: top + 1]
        dist = new
        top += int(r)
    s = int(round(2.0 * r_plus_nonzero))
    p_ge = float(dist[s:].sum())
    p_le = float(dist[: s + 1].sum())
    return min(1.0, p_ge), min(1.0, p_le)


def wilcoxon(
    a: Any,
    b: Any | None = None,
    alternative: str = "two-sided",
    method: str = "exact",
    zero_method: str = "wilcox",
    correction: bool = False,
    decimals: int | None = 12,
) -> WilcoxonResult:
    """Wilcoxon signed-rank test on paired values (e.g. one MCR per fold for two variants).

    Args:
        a, b: paired samples (``d = a - b``), or the differences in ``a`` with ``b=None``.
        alternative: ``"two-sided"``; ``"greater"`` (a tends to exceed b) or ``"less"``.
        method: ``"exact"`` (default): the exact sign-flip distribution of the rank sum given
            the observed ranks, so it stays exact with tied or zero differences (scipy's
            ``"exact"`` ignores ties; this equals scipy's exhaustive ``PermutationMethod``);
            ``"approx"`` (alias ``"asymptotic"``): normal approximation with tie correction
            (and Cureton's correction for ``"pratt"``), as scipy's ``"asymptotic"``;
            ``"auto"``: exact up to 50 pairs, else approx.
        zero_method: zero differences are ``"wilcox"``: dropped before ranking (Wilcoxon's
            textbook test, the kit's default; the paper does not say); ``"pratt"``: ranked, then
            their ranks dropped; ``"zsplit"``: ranked and their ranks split half to each side.
        correction: continuity correction of 0.5 for the normal approximation.
        decimals: differences are rounded to this many decimals first, so floating-point
            noise (``0.85 - 0.84``) neither makes false zeros non-zero nor breaks ties.

    Returns:
        :class:`WilcoxonResult`; its ``note`` states the zero handling and the smallest
        attainable p-value.

    Example:
        >>> r = wilcoxon([1, 2, 3, 4, 5])                     # five folds all in favour of a
        >>> r.pvalue, r.n, r.n_zero
        (0.0625, 5, 0)
        >>> round(wilcoxon([1, 2, 3, 4, 5], method="approx").pvalue, 4)
        0.0431
        >>> wilcoxon([1, 2, 3, 4, 5], alternative="greater").pvalue
        0.03125
    """
    _check("alternative", alternative, _ALTERNATIVES)
    _check("method", method, _METHODS)
    _check("zero_method", zero_method, _ZERO_METHODS)
    d = _differences(a, b, decimals)
    n = int(d.size)
    if n == 0:
        raise ValueError("wilcoxon needs at least one pair")
    zero = d == 0
    n_zero = int(zero.sum())
    if method == "asymptotic":
        method = "approx"
    if method == "auto":
        method = "exact" if n <= 50 else "approx"

    if zero_method == "wilcox":
        dr = d[~zero]
        ranks = _st.rankdata(np.abs(dr)) if dr.size else np.zeros(0)
        zero_ranks = np.zeros(0)
        nz_ranks, nz_d = ranks, dr
    else:
        ranks = _st.rankdata(np.abs(d))
        zero_ranks = ranks[zero]
        nz_ranks, nz_d = ranks[~zero], d[~zero]
    r_plus = float(nz_ranks[nz_d > 0].sum())
    r_minus = float(nz_ranks[nz_d < 0].sum())
    if zero_method == "zsplit":
        r_plus += float(zero_ranks.sum()) / 2.0
        r_minus += float(zero_ranks.sum()) / 2.0
    statistic = min(r_plus, r_minus) if alternative == "two-sided" else r_plus
    n_nonzero = int(nz_d.size)
    has_ties = n_nonzero > 0 and len(np.unique(np.abs(nz_d))) < n_nonzero

    zero_words = {
        "wilcox": "dropped before ranking (zero_method='wilcox')",
        "pratt": "ranked with the others, then their ranks dropped (zero_method='pratt')",
        "zsplit": "ranked with the others, their ranks split half to each side (zero_method='zsplit')",
    }[zero_method]
    note = f"{n} pair(s), {n_zero} zero difference(s) {zero_words}"
    if has_ties:
        note += "; tied |differences| get mid-ranks"
    zstat = float("nan")

    if n_nonzero == 0:
        pvalue = 1.0
        note += "; all differences are zero: no evidence either way, p = 1"
        min_p = 1.0
        used = method
    elif method == "exact":
        used = "exact"
        p_ge, p_le = _exact_tail(nz_ranks, float(nz_ranks[nz_d > 0].sum()))
        if alternative == "greater":
            pvalue = p_ge
        elif alternative == "less":
            pvalue = p_le
        else:
            pvalue = min(1.0, 2.0 * min(p_ge, p_le))
        # The most extreme outcome: all non-zero differences on one side.
        min_p = min_exact_pvalue(n_nonzero, alternative)
        note += (f"; exact sign-flip distribution over the {n_nonzero} non-zero pair(s) "
                 f"(2^{n_nonzero} = {2 ** n_nonzero} equally likely sign patterns); "
                 f"smallest attainable {alternative} p = {min_p:.4g}")
    else:
        used = "approx"
        n_r = n if zero_method in ("pratt", "zsplit") else n_nonzero
        mn = n_r * (n_r + 1) / 4.0
        var = n_r * (n_r + 1) * (2 * n_r + 1) / 24.0
        if zero_method == "pratt" and n_zero:
            mn -= n_zero * (n_zero + 1) / 4.0
            var -= n_zero * (n_zero + 1) * (2 * n_zero + 1) / 24.0
        # Tie correction over the ranked values; Pratt's zeros are covered by Cureton's term.
        all_ranks = ranks if zero_method == "zsplit" else nz_ranks
        _, counts = np.unique(all_ranks, return_counts=True)
        var -= float((counts ** 3 - counts).sum()) / 48.0
        se = math.sqrt(var) if var > 0 else float("nan")
        t = r_plus if alternative != "two-sided" else statistic
        dcorr = 0.0
        if correction:
            if alternative == "two-sided":
                dcorr = 0.5 * np.sign(t - mn)
            elif alternative == "greater":
                dcorr = 0.5
            else:
                dcorr = -0.5
        zstat = float((t - mn - dcorr) / se)
        if alternative == "two-sided":
            pvalue = float(min(1.0, 2.0 * _st.norm.sf(abs(zstat))))
        elif alternative == "greater":
            pvalue = float(_st.norm.sf(zstat))
        else:
            pvalue = float(_st.norm.cdf(zstat))
        min_p = min_approx_pvalue(n_nonzero, alternative, correction)
        note += (f"; normal approximation (z = {zstat:.3f}, tie-corrected variance"
                 f"{', continuity correction' if correction else ', no continuity correction'}); "
                 f"with {n_nonzero} pair(s) it is approximate (the exact smallest "
                 f"{alternative} p is {min_exact_pvalue(n_nonzero, alternative):.4g})")
    return WilcoxonResult(
        statistic=float(statistic), pvalue=float(pvalue), n=n, n_zero=n_zero, method=used, note=note,
        alternative=alternative, zero_method=zero_method, r_plus=r_plus, r_minus=r_minus,
        zstatistic=zstat, min_pvalue=float(min_p), mean_difference=float(d.mean()),
    )


def paired_values(
    df: pd.DataFrame,
    a: Any,
    b: Any,
    *,
    column: str = "fusion",
    value: str = "mcr",
    pair_on: Sequence[str] = ("backbone", "fold"),
) -> pd.DataFrame:
    """Align the values of variant ``a`` and ``b`` (values of ``column``) pair by pair.

    Returns a frame with the ``pair_on`` columns, ``a``, ``b`` and ``diff = a - b``; pairs
    present on one side only are dropped (``attrs["dropped"]`` counts them).

    Raises:
        ValueError: a variant has two rows for one pair (filter the records first).

    Example:
        >>> df = pd.DataFrame({"backbone": ["r"] * 4, "fold": [0, 1, 0, 1],
        ...                    "fusion": ["metanet", "metanet", "none", "none"], "mcr": [.8, .9, .7, .8]})
        >>> paired_values(df, "metanet", "none")["diff"].round(6).tolist()
        [0.1, 0.1]
    """
    pair_on = list(pair_on)
    for c in [*pair_on, column, value]:
        if c not in df.columns:
            raise KeyError(f"records have no column {c!r}")
    sides = []
    for name, v in (("a", a), ("b", b)):
        part = df.loc[df[column] == v, [*pair_on, value]]
        dup = part.duplicated(pair_on, keep=False)
        if dup.any():
            ex = part.loc[dup, pair_on].drop_duplicates().head(3).to_dict("records")
            raise ValueError(
                f"{column}={v!r} has several runs for the same pair, e.g. {ex}; filter the records to "
                f"one setting first (e.g. meta_features, meta_layers, split_scheme)")
        sides.append(part.rename(columns={value: name}))
    both = sides[0].merge(sides[1], on=pair_on, how="outer")
    dropped = int(both[["a", "b"]].isna().any(axis=1).sum())
    both = both.dropna(subset=["a", "b"]).sort_values(pair_on, kind="stable").reset_index(drop=True)
    both["diff"] = both["a"] - both["b"]
    both.attrs["dropped"] = dropped
    return both


def pooled_wilcoxon(
    df: pd.DataFrame,
    a: Any = "metanet",
    b: Any = "none",
    *,
    column: str = "fusion",
    value: str = "mcr",
    pair_on: Sequence[str] = ("backbone", "fold"),
    alternative: str = "two-sided",
    method: str = "exact",
    zero_method: str = "wilcox",
) -> WilcoxonResult:
    """Wilcoxon signed-rank test over pairs pooled across backbones: one pair per (backbone, fold).

    With 6 backbones x 5 folds there are 30 pairs, so the test can reach small p-values.
    The pairs are not independent (folds of one backbone share data), which the note says.

    Example:
        >>> df = pd.DataFrame({"backbone": ["r"] * 6 + ["v"] * 6, "fold": [0, 1, 2] * 4,
        ...                    "fusion": (["metanet"] * 3 + ["none"] * 3) * 2,
        ...                    "mcr": [.8, .9, .85, .7, .8, .8, .6, .7, .65, .5, .6, .6]})
        >>> r = pooled_wilcoxon(df)
        >>> r.n, r.pvalue
        (6, 0.03125)
    """
    pairs = paired_values(df, a, b, column=column, value=value, pair_on=pair_on)
    if pairs.empty:
        raise ValueError(f"no pairs of {column}={a!r} and {column}={b!r} matched on {list(pair_on)}")
    r = wilcoxon(pairs["diff"].to_numpy(), None, alternative=alternative, method=method,
                 zero_method=zero_method)
    groups = [c for c in pair_on if c != "fold"]
    n_groups = pairs[groups].drop_duplicates().shape[0] if groups else 1
    extra = (f"pooled over {n_groups} group(s) of {', '.join(groups) or 'all'}; pairs of one group share "
             f"data, so the pairs are not fully independent")
    if pairs.attrs.get("dropped"):
        extra += f"; {pairs.attrs['dropped']} unpaired run(s) left out"
    return WilcoxonResult(**{**r.__dict__, "note": f"{r.note}; {extra}"})


def corrected_ttest(
    a: Any,
    b: Any | None = None,
    n_train: float = 4.0,
    n_test: float = 1.0,
    alternative: str = "two-sided",
) -> TTestResult:
    """Nadeau-Bengio corrected resampled t-test on paired per-fold scores.

    ``t = mean(d) / sqrt((1/k + n_test/n_train) * var(d))`` with ``var`` the sample variance
    (``ddof=1``) of the k differences and k - 1 degrees of freedom (Nadeau & Bengio 2003;
    Bouckaert & Frank 2004). The term ``n_test/n_train`` inflates the variance for the
    overlap of training sets; for k-fold cross-validation ``n_test/n_train = 1/(k-1)``
    (the defaults 4 and 1 give 5-fold's 1/4; only the ratio matters).

    Example:
        >>> r = corrected_ttest([0.02, 0.01, 0.03, 0.02, 0.02], n_train=8012, n_test=2003)
        >>> round(r.statistic, 3), r.df     # 0.02 / sqrt((1/5 + 2003/8012) * 5e-5)
        (4.216, 4)
    """
    _check("alternative", alternative, _ALTERNATIVES)
    d = _differences(a, b, None)
    k = int(d.size)
    if k < 2:
        raise ValueError("the corrected t-test needs at least 2 paired values")
    if n_train <= 0 or n_test <= 0:
        raise ValueError("n_train and n_test must be positive")
    corr = 1.0 / k + float(n_test) / float(n_train)
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    note = (f"Nadeau-Bengio corrected resampled t-test: variance x (1/{k} + {n_test:g}/{n_train:g}) "
            f"= x {corr:.4f}, {k - 1} degrees of freedom")
    if sd == 0.0:
        if mean == 0.0:
            t, p = float("nan"), float("nan")
            note += "; all differences equal zero: undefined"
        else:
            t = math.copysign(math.inf, mean)
            p = {"two-sided": 0.0, "greater": 0.0 if mean > 0 else 1.0,
                 "less": 0.0 if mean < 0 else 1.0}[alternative]
            note += "; all differences equal: zero variance, the test degenerates"
    else:
        t = mean / math.sqrt(corr * sd * sd)
        dist = _st.t(k - 1)
        if alternative == "two-sided":
            p = float(min(1.0, 2.0 * dist.sf(abs(t))))
        elif alternative == "greater":
            p = float(dist.sf(t))
        else:
            p = float(dist.cdf(t))
    return TTestResult(statistic=float(t), pvalue=float(p), df=k - 1, k=k, mean_difference=mean,
                       std_difference=sd, correction=corr, alternative=alternative, note=note)


def holm(pvalues: Any) -> Any:
    """Holm-Bonferroni step-down adjusted p-values, in the input order (capped at 1).

    NaN entries stay NaN and do not count as tests. A pandas Series comes back as a Series.

    Example:
        >>> holm([0.01, 0.04, 0.03, 0.005]).round(4).tolist()
        [0.03, 0.06, 0.06, 0.02]
    """
    index = pvalues.index if isinstance(pvalues, pd.Series) else None
    p = np.asarray(pvalues, dtype=float).ravel()
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if ok.size:
        if ((p[ok] < 0) | (p[ok] > 1)).any():
            raise ValueError("p-values must lie in [0, 1]")
        m = ok.size
        order = ok[np.argsort(p[ok], kind="stable")]
        adj = np.minimum(1.0, (m - np.arange(m)) * p[order])
        out[order] = np.maximum.accumulate(adj)
    return pd.Series(out, index=index) if index is not None else out


def compare(
    records: pd.DataFrame,
    a: Any = "metanet",
    b: Any = "none",
    *,
    column: str = "fusion",
    by: str = "backbone",
    value: str = "mcr",
    n_train: float | None = None,
    n_test: float | None = None,
) -> pd.DataFrame:
    """Per-group (default: per backbone) and pooled comparison of ``a`` against ``b``.

    One row per group and a last row ``<by> = "pooled"``: ``n`` pairs, ``mean_diff``,
    ``wins`` (folds with a > b), Wilcoxon p-values (exact two-sided ``p_exact``, exact
    one-sided "a > b" ``p_exact_greater``, normal-approximation two-sided ``p_approx``),
    the corrected t-test ``p_ttest`` (ratio ``n_test/n_train``: the arguments if given, else
    the records' mean ``n_val`` / ``n_train`` per group, else 1/(k-1) from ``n_folds``), their Holm adjustments across the groups (``*_holm``, pooled row excluded)
    and the smallest attainable exact two-sided p ``min_p_exact``.

    Example:
        >>> df = pd.DataFrame({"backbone": ["r"] * 10, "fold": list(range(5)) * 2,
        ...                    "fusion": ["metanet"] * 5 + ["none"] * 5,
        ...                    "mcr": [.81, .82, .83, .84, .85, .80, .80, .80, .80, .80]})
        >>> row = compare(df).iloc[0]
        >>> row["backbone"], int(row["n"]), float(row["p_exact"]), float(row["p_exact_greater"])
        ('r', 5, 0.0625, 0.03125)
    """
    pairs = paired_values(records, a, b, column=column, value=value, pair_on=(by, "fold"))
    k_default = None
    if "n_folds" in records.columns and records["n_folds"].notna().any():
        k_default = float(records["n_folds"].max())
    sizes: dict[Any, tuple[float, float]] = {}
    if {"n_train", "n_val"}.issubset(records.columns):
        part = records.loc[records[column].isin([a, b]), [by, "n_train", "n_val"]]
        for name, g in part.groupby(by):
            tr = pd.to_numeric(g["n_train"], errors="coerce").mean()
            te = pd.to_numeric(g["n_val"], errors="coerce").mean()
            if tr > 0 and te > 0:
                sizes[name] = (float(tr), float(te))

    def _row(name: Any, g: pd.DataFrame, pooled: bool) -> dict[str, Any]:
        d = g["diff"].to_numpy()
        row: dict[str, Any] = {by: name, "a": a, "b": b, "n": int(len(d)),
                               "mean_diff": float(d.mean()) if len(d) else float("nan"),
                               "wins": int((np.round(d, 12) > 0).sum())}
        if len(d) == 0:
            return row
        row["p_exact"] = wilcoxon(d).pvalue
        row["p_exact_greater"] = wilcoxon(d, alternative="greater").pvalue
        row["p_approx"] = wilcoxon(d, method="approx").pvalue
        row["min_p_exact"] = min_exact_pvalue(int((np.round(d, 12) != 0).sum()))
        if len(d) >= 2 and not pooled:  # the corrected t-test is defined for one CV run
            if n_train is not None and n_test is not None:
                tr, te = n_train, n_test
            elif name in sizes:
                tr, te = sizes[name]
            else:
                k = k_default or float(len(d))
                tr, te = k - 1.0, 1.0
            row["p_ttest"] = corrected_ttest(d, n_train=tr, n_test=te).pvalue
        return row

    rows = [_row(name, g, False) for name, g in pairs.groupby(by, sort=True)]
    cols = ["p_exact", "p_exact_greater", "p_approx", "p_ttest"]
    out = pd.DataFrame(rows, columns=[by, "a", "b", "n", "mean_diff", "wins", *cols, "min_p_exact"])
    for c in cols:
        out[f"{c}_holm"] = holm(out[c].to_numpy(dtype=float)) if len(out) else []
    if len(pairs):
        pooled = _row("pooled", pairs, True)
        out = pd.concat([out, pd.DataFrame([pooled])], ignore_index=True)
    return out
