"""Significance tests (metanet_utils.stats) against scipy, hand counts and the enumerated sign patterns."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from metanet_utils import stats as ms


def enumerated_p(d, alternative="two-sided"):
    """The exact p-value by counting: every sign pattern of the non-zero |d| (mid-ranks) is equally likely."""
    d = np.asarray(d, dtype=float)
    d = d[d != 0]
    ranks = st.rankdata(np.abs(d))
    observed = ranks[d > 0].sum()
    sums = np.array([ranks[np.array(s) > 0].sum() for s in itertools.product([1, -1], repeat=d.size)])
    ge, le = np.mean(sums >= observed - 1e-9), np.mean(sums <= observed + 1e-9)
    return {"greater": ge, "less": le, "two-sided": min(1.0, 2 * min(ge, le))}[alternative]


# --------------------------------------------------------------------------- 5 folds, all agreeing


def test_min_exact_pvalue_is_2_over_2_to_the_n_two_sided_and_half_of_it_one_sided():
    assert ms.min_exact_pvalue(5) == 0.0625 == 2 / 32
    assert ms.min_exact_pvalue(5, "greater") == ms.min_exact_pvalue(5, "less") == 1 / 32
    assert ms.min_exact_pvalue(1) == 1.0 and ms.min_exact_pvalue(10) == pytest.approx(2 / 1024)
    for n in range(1, 9):  # reached when every pair agrees
        assert ms.wilcoxon(np.arange(1, n + 1)).pvalue == pytest.approx(ms.min_exact_pvalue(n))


def test_five_folds_all_in_favour_give_exact_0_0625_one_sided_0_03125_and_approx_0_0431():
    a = [0.881, 0.872, 0.893, 0.864, 0.905]
    b = [0.851, 0.862, 0.853, 0.844, 0.855]  # differences 0.03, 0.01, 0.04, 0.02, 0.05
    r = ms.wilcoxon(a, b)
    assert (r.statistic, r.pvalue, r.n, r.n_zero, r.method) == (0.0, 0.0625, 5, 0, "exact")
    assert ms.wilcoxon(a, b, alternative="greater").pvalue == 0.03125
    assert ms.wilcoxon(a, b, alternative="less").pvalue == 1.0
    z = (15 - 7.5) / math.sqrt(5 * 6 * 11 / 24)  # W+ = 15 against its null mean 7.5 and variance 13.75
    approx = ms.wilcoxon(a, b, method="asymptotic")
    assert approx.pvalue == pytest.approx(math.erfc(z / math.sqrt(2))) and round(approx.pvalue, 4) == 0.0431


# --------------------------------------------------------------------------- against scipy and counting


@pytest.mark.parametrize("n", [5, 9, 14])
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_exact_without_ties_is_scipys_exact_and_the_enumerated_count(n, alternative):
    rng = np.random.default_rng(n)
    d = rng.permutation(np.arange(1, n + 1)) * rng.choice([-1, 1], n) + 0.3
    r = ms.wilcoxon(d, alternative=alternative)
    ref = st.wilcoxon(d, alternative=alternative, method="exact")
    assert (r.statistic, r.pvalue) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue, rel=1e-12))
    if n <= 9:
        assert r.pvalue == pytest.approx(enumerated_p(d, alternative), rel=1e-12)


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_exact_with_tied_differences_counts_every_sign_pattern(alternative):
    rng = np.random.default_rng(2)
    for _ in range(6):
        d = rng.integers(-3, 5, rng.integers(4, 10)).astype(float)
        if np.unique(np.abs(d[d != 0])).size == (d != 0).sum():
            continue
        r = ms.wilcoxon(d, alternative=alternative)
        assert r.method == "exact (all sign patterns)"
        assert r.pvalue == pytest.approx(enumerated_p(d, alternative), rel=1e-12)


def test_many_tied_pairs_fall_back_to_scipys_tie_corrected_normal_approximation():
    d = np.tile([0.01, -0.02, 0.03, 0.04, 0.05], 4)  # 20 pairs: 2**20 patterns are not enumerated
    r = ms.wilcoxon(d)
    assert r.method == "asymptotic" and r.pvalue == pytest.approx(st.wilcoxon(d, method="asymptotic").pvalue)


# --------------------------------------------------------------------------- zeros, by hand


def test_a_zero_difference_is_dropped_before_ranking_hand_count():
    # d = [0, 1.5, -2, 3, 4, 5.5, 2]; the zero dropped; |d| ranks 1, 2.5, 2.5, 4, 5, 6; W- = 2.5.
    # Patterns with a negative rank sum <= 2.5: {}, {1}, {2.5}, {2.5'} -> 4/64 one-sided, 8/64 two-sided.
    d = [0, 1.5, -2, 3, 4, 5.5, 2]
    r = ms.wilcoxon(d)
    assert (r.n, r.n_zero, r.statistic, r.pvalue) == (7, 1, 2.5, pytest.approx(8 / 64))
    assert ms.wilcoxon(d, alternative="greater").pvalue == pytest.approx(4 / 64)


def test_five_folds_with_one_zero_cannot_reach_the_five_fold_minimum():
    r = ms.wilcoxon([0.0, 0.01, 0.02, 0.03, 0.04])
    assert (r.n, r.n_zero, r.pvalue) == (5, 1, 0.125) and r.pvalue == ms.min_exact_pvalue(4)


def test_floating_noise_is_a_zero_and_a_tie():
    assert ms.wilcoxon([0.3, 0.86, 0.87, 0.88], [0.1 + 0.2, 0.85, 0.85, 0.85]).n_zero == 1
    assert ms.differences([0.86, 0.87], [0.85, 0.86]).tolist() == [0.01, 0.01]  # 0.0100000000000000x twice


def test_all_zero_differences_give_p_1():
    r = ms.wilcoxon([0.5, 0.6], [0.5, 0.6])
    assert (r.pvalue, r.n_zero) == (1.0, 2)


def test_wilcoxon_refuses_unequal_lengths_nan_and_no_pairs():
    with pytest.raises(ValueError, match="equal lengths"):
        ms.wilcoxon([1, 2], [1])
    with pytest.raises(ValueError, match="NaN"):
        ms.wilcoxon([1, np.nan])
    with pytest.raises(ValueError, match="at least one pair"):
        ms.wilcoxon([])


# --------------------------------------------------------------------------- corrected t-test


def test_corrected_ttest_is_the_nadeau_bengio_formula_and_the_plain_paired_ttest_without_overlap():
    a = np.array([0.88, 0.87, 0.9, 0.86, 0.89])
    b = np.array([0.85, 0.86, 0.86, 0.85, 0.87])
    d = a - b
    t = d.mean() / math.sqrt((1 / 5 + 2003 / 8012) * d.var(ddof=1))
    r = ms.corrected_ttest(a, b, n_train=8012, n_test=2003)
    assert (r.statistic, r.df) == (pytest.approx(t), 4) and r.pvalue == pytest.approx(2 * st.t(4).sf(t))
    assert r.pvalue > st.ttest_rel(a, b).pvalue  # the correction only widens
    assert ms.corrected_ttest(a, b, n_train=1.0, n_test=1e-15).pvalue == pytest.approx(st.ttest_rel(a, b).pvalue)


def test_corrected_ttest_without_variance_is_nan_or_infinite_and_refuses_one_pair():
    zero = ms.corrected_ttest([0.0, 0.0, 0.0])
    assert math.isnan(zero.statistic) and math.isnan(zero.pvalue)
    r = ms.corrected_ttest([0.01, 0.01, 0.01])
    assert r.pvalue == 0.0 and math.isinf(r.statistic)
    with pytest.raises(ValueError):
        ms.corrected_ttest([0.01])


# --------------------------------------------------------------------------- Holm


def test_holm_adjusted_p_values_by_hand_are_monotone_capped_at_1_and_keep_nan():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone 0.06
    np.testing.assert_allclose(ms.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(ms.holm([0.5, 0.6]), [1.0, 1.0])
    np.testing.assert_allclose(ms.holm([0.01, np.nan, 0.02]), [0.02, np.nan, 0.02])  # NaN is not a test
    assert ms.holm([]).size == 0


# --------------------------------------------------------------------------- pairing and compare


def _grid(diffs_by_backbone):
    rows = []
    for bb, diffs in diffs_by_backbone.items():
        for fold, dlt in enumerate(diffs):
            base = 0.8 + 0.01 * fold
            rows.append({"backbone": bb, "fold": fold, "fusion": "none", "mcr": base})
            rows.append({"backbone": bb, "fold": fold, "fusion": "metanet", "mcr": base + dlt})
    return pd.DataFrame(rows)


def test_paired_values_puts_each_folds_two_variants_side_by_side_and_leaves_unpaired_out():
    df = _grid({"vgg19": [0.02, -0.01], "alexnet": [0.01, 0.03]})
    df = pd.concat([df, pd.DataFrame([{"backbone": "vgg19", "fold": 2, "fusion": "none", "mcr": 0.8}])])
    pairs = ms.paired_values(df.sample(frac=1, random_state=0), "metanet", "none")
    assert list(pairs.columns) == ["backbone", "fold", "a", "b", "diff"]
    assert list(zip(pairs["backbone"], pairs["fold"])) == [("alexnet", 0), ("alexnet", 1), ("vgg19", 0), ("vgg19", 1)]
    np.testing.assert_allclose(pairs["b"], [0.8, 0.81, 0.8, 0.81])
    np.testing.assert_allclose(pairs["diff"], [0.01, 0.03, 0.02, -0.01])


def test_paired_values_refuses_two_runs_of_one_variant_on_one_fold():
    df = _grid({"alexnet": [0.01, 0.02]})
    with pytest.raises(ValueError, match="several runs for the same pair"):
        ms.paired_values(pd.concat([df, df.iloc[[0]]]), "metanet", "none")


def test_compare_has_a_row_per_backbone_then_pooled_with_wins_exact_approx_ttest_and_holm_p():
    df = _grid({"alexnet": [0.01, 0.02, 0.03, 0.04, 0.05], "vgg19": [0.015, -0.025, 0.035, 0.045, 0.055]})
    out = ms.compare(df, "metanet", "none")
    assert out["backbone"].tolist() == ["alexnet", "vgg19", "pooled"]
    al, vg, pooled = (out.iloc[i] for i in range(3))
    assert (al["n"], al["wins"], vg["wins"], pooled["n"], pooled["wins"]) == (5, 5, 4, 10, 9)
    assert (al["p_exact"], al["p_exact_greater"], al["min_p_exact"]) == (0.0625, 0.03125, 0.0625)
    assert round(al["p_approx"], 4) == 0.0431
    assert vg["p_exact"] == pytest.approx(enumerated_p([0.015, -0.025, 0.035, 0.045, 0.055]))  # W- = 2: 2 * 3/32
    d = np.array([0.01, 0.02, 0.03, 0.04, 0.05])
    t = d.mean() / math.sqrt((1 / 5 + 1 / 4) * d.var(ddof=1))  # no fold sizes: 5-fold's 1/4
    assert al["p_ttest"] == pytest.approx(2 * st.t(4).sf(t), rel=1e-9)
    np.testing.assert_allclose(out["p_exact_holm"].iloc[:2], ms.holm(out["p_exact"].iloc[:2]))
    pooled_d = ms.paired_values(df, "metanet", "none")["diff"].round(12)
    assert pooled["p_exact"] == pytest.approx(st.wilcoxon(pooled_d, method="exact").pvalue)
    assert math.isnan(pooled["p_ttest"]) and math.isnan(pooled["p_exact_holm"])


def test_compare_uses_the_records_fold_sizes_for_the_ttest():
    df = _grid({"alexnet": [0.01, 0.02, 0.03, 0.04, 0.06]})
    df["n_train"], df["n_val"] = 600, 300  # ratio 1/2 instead of 5-fold's 1/4
    d = np.array([0.01, 0.02, 0.03, 0.04, 0.06])
    t = d.mean() / math.sqrt((1 / 5 + 300 / 600) * d.var(ddof=1))
    assert ms.compare(df).iloc[0]["p_ttest"] == pytest.approx(2 * st.t(4).sf(t), rel=1e-9)


def test_compare_without_pairs_is_an_empty_table():
    out = ms.compare(_grid({"alexnet": [0.01]}).query("fusion == 'none'"))
    assert out.empty and {"p_exact", "p_ttest_holm", "min_p_exact"} <= set(out.columns)
