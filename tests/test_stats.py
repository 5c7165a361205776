"""Significance tests (metanet_utils.stats) against scipy and hand-worked examples."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from metanet_utils import stats as ms


# --------------------------------------------------------------------------- 5 folds, all agreeing


def test_min_exact_pvalue_is_2_over_2_to_the_n_two_sided_and_half_of_it_one_sided():
    assert ms.min_exact_pvalue(5) == 0.0625
    assert ms.min_exact_pvalue(5, "greater") == 0.03125
    assert ms.min_exact_pvalue(5, "less") == 0.03125
    assert ms.min_exact_pvalue(1) == 1.0
    assert ms.min_exact_pvalue(10) == pytest.approx(2 / 1024)


def test_five_pairs_all_positive_exact_and_approx():
    a = [0.881, 0.872, 0.893, 0.864, 0.905]
    b = [0.851, 0.862, 0.853, 0.844, 0.855]  # differences 0.03, 0.01, 0.04, 0.02, 0.05
    r = ms.wilcoxon(a, b)
    assert (r.pvalue, r.n, r.n_zero, r.method) == (0.0625, 5, 0, "exact")
    assert r.statistic == 0.0 and r.r_plus == 15.0 and r.r_minus == 0.0
    assert "0.0625" in r.note
    assert ms.wilcoxon(a, b, alternative="greater").pvalue == 0.03125
    assert ms.wilcoxon(a, b, alternative="less").pvalue == 1.0
    # normal approximation, no continuity correction: z = (15 - 7.5) / sqrt(13.75)
    z = (15 - 7.5) / math.sqrt(13.75)
    p_hand = 2 * (1 - 0.5 * (1 + math.erf(z / math.sqrt(2))))
    ra = ms.wilcoxon(a, b, method="approx")
    assert ra.pvalue == pytest.approx(p_hand) and round(ra.pvalue, 4) == 0.0431
    assert ra.method == "approx" and abs(ra.zstatistic) == pytest.approx(z)
    assert ra.pvalue == pytest.approx(st.wilcoxon(np.subtract(a, b), method="asymptotic").pvalue)
    assert round(ms.min_approx_pvalue(5), 4) == 0.0431
    assert ms.min_approx_pvalue(5) == pytest.approx(p_hand)


# --------------------------------------------------------------------------- against scipy


@pytest.mark.parametrize("n", [5, 6, 9, 14, 25])
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_exact_matches_scipy_without_ties(n, alternative):
    rng = np.random.default_rng(n)
    d = rng.permutation(np.arange(1, n + 1)) * rng.choice([-1, 1], n) + rng.normal(0, 0.01, n) + 0.3
    ref = st.wilcoxon(d, alternative=alternative, method="exact")
    r = ms.wilcoxon(d, alternative=alternative, method="exact")
    assert r.statistic == pytest.approx(ref.statistic)
    assert r.pvalue == pytest.approx(ref.pvalue, rel=1e-9)


@pytest.mark.parametrize("zero_method", ["wilcox", "pratt", "zsplit"])
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
@pytest.mark.parametrize("correction", [False, True])
def test_approx_matches_scipy_with_ties_and_zeros(zero_method, alternative, correction):
    rng = np.random.default_rng(1)
    for _ in range(25):
        d = rng.integers(-3, 5, rng.integers(5, 16)).astype(float)
        if not (d != 0).any():
            continue
        ref = st.wilcoxon(d, zero_method=zero_method, alternative=alternative, correction=correction,
                          method="asymptotic")
        r = ms.wilcoxon(d, zero_method=zero_method, alternative=alternative, correction=correction,
                        method="approx")
        assert r.statistic == pytest.approx(ref.statistic)
        assert r.pvalue == pytest.approx(ref.pvalue, rel=1e-9)


@pytest.mark.parametrize("zero_method", ["wilcox", "pratt", "zsplit"])
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_exact_with_ties_and_zeros_matches_exhaustive_permutation(zero_method, alternative):
    rng = np.random.default_rng(2)
    for _ in range(8):
        d = rng.integers(-3, 5, rng.integers(4, 10)).astype(float)
        if not (d != 0).any():
            continue
        ref = st.wilcoxon(d, zero_method=zero_method, alternative=alternative, method=st.PermutationMethod())
        r = ms.wilcoxon(d, zero_method=zero_method, alternative=alternative, method="exact")
        assert r.statistic == pytest.approx(ref.statistic)
        assert r.pvalue == pytest.approx(ref.pvalue, rel=1e-9)


# --------------------------------------------------------------------------- zeros, by hand


def test_zero_difference_hand_worked():
    # d = [0, 1.5, -2, 3, 4, 5.5, 2]; zero dropped; |d| ranks 1, 2.5, 2.5, 4, 5, 6; r_minus = 2.5.
    # Sign patterns with negative rank sum <= 2.5: {}, {1}, {2.5}, {2.5'} -> 4/64; two-sided 8/64.
    d = [0, 1.5, -2, 3, 4, 5.5, 2]
    r = ms.wilcoxon(d)
    assert (r.n, r.n_zero, r.statistic, r.r_plus) == (7, 1, 2.5, 18.5)
    assert r.pvalue == pytest.approx(0.125)
    assert "1 zero difference(s) dropped before ranking" in r.note
    assert "mid-ranks" in r.note
    assert ms.wilcoxon(d, alternative="greater").pvalue == pytest.approx(4 / 64)
    # Pratt: the zero takes rank 1, the others 2, 3.5, 3.5, 5, 6, 7; r_minus = 3.5 ->
    # patterns with negative sum <= 3.5 over {2, 3.5, 3.5, 5, 6, 7}: {}, {2}, {3.5}, {3.5'} -> 8/64.
    rp = ms.wilcoxon(d, zero_method="pratt")
    assert rp.statistic == 3.5 and rp.pvalue == pytest.approx(0.125)
    assert "ranked with the others, then their ranks dropped" in rp.note
    rz = ms.wilcoxon(d, zero_method="zsplit")
    assert rz.statistic == 4.0 and "split" in rz.note


def test_five_pairs_with_one_zero_cannot_reach_the_five_pair_minimum():
    r = ms.wilcoxon([0.0, 0.01, 0.02, 0.03, 0.04])
    assert r.n == 5 and r.n_zero == 1
    assert r.pvalue == 0.125 == r.min_pvalue  # 4 non-zero pairs: 2 / 2**4


def test_floating_noise_is_a_zero():
    a = [0.3, 0.86, 0.87, 0.88, 0.89, 0.9]
    b = [0.1 + 0.2, 0.85, 0.85, 0.85, 0.85, 0.85]  # 0.1 + 0.2 != 0.3 in floating point
    assert ms.wilcoxon(a, b).n_zero == 1
    assert ms.wilcoxon(a, b, decimals=None).n_zero == 0


def test_all_zero_differences_give_p_1_and_say_so():
    r = ms.wilcoxon([0.5, 0.6], [0.5, 0.6])
    assert r.pvalue == 1.0 and r.n_zero == 2 and "all differences are zero" in r.note


def test_wilcoxon_refuses_an_unknown_alternative_or_zero_method_and_unequal_lengths():
    with pytest.raises(ValueError, match="alternative"):
        ms.wilcoxon([1, 2], alternative="bigger")
    with pytest.raises(ValueError, match="zero_method"):
        ms.wilcoxon([1, 2], zero_method="drop")
    with pytest.raises(ValueError, match="equal lengths"):
        ms.wilcoxon([1, 2], [1])


# --------------------------------------------------------------------------- pooling


def _grid(diffs_by_backbone):
    rows = []
    for bb, diffs in diffs_by_backbone.items():
        for fold, dlt in enumerate(diffs):
            base = 0.8 + 0.01 * fold
            rows.append({"backbone": bb, "fold": fold, "fusion": "none", "mcr": base})
            rows.append({"backbone": bb, "fold": fold, "fusion": "metanet", "mcr": base + dlt})
    return pd.DataFrame(rows)


def test_pooled_wilcoxon_over_backbones():
    df = _grid({"alexnet": [0.01, 0.02, 0.03, 0.04, 0.05], "vgg19": [0.015, 0.025, 0.035, 0.045, -0.005]})
    r = ms.pooled_wilcoxon(df, "metanet", "none")
    d = np.round(ms.paired_values(df, "metanet", "none")["diff"].to_numpy(), 12)
    ref = st.wilcoxon(d, method="exact")
    assert r.n == 10 and r.pvalue == pytest.approx(ref.pvalue)
    assert "pooled over 2 group(s) of backbone" in r.note
    one = ms.pooled_wilcoxon(df, alternative="greater")
    assert one.pvalue == pytest.approx(st.wilcoxon(d, alternative="greater", method="exact").pvalue)


def test_pooled_wilcoxon_drops_unpaired_and_refuses_duplicates():
    df = _grid({"alexnet": [0.01, 0.02, 0.03]})
    df = pd.concat([df, pd.DataFrame([{"backbone": "vgg19", "fold": 0, "fusion": "none", "mcr": 0.8}])])
    r = ms.pooled_wilcoxon(df)
    assert r.n == 3 and "1 unpaired run(s) left out" in r.note
    dup = pd.concat([df, df.iloc[[0]]])
    with pytest.raises(ValueError, match="several runs for the same pair"):
        ms.pooled_wilcoxon(dup)


# --------------------------------------------------------------------------- corrected t-test


def test_corrected_ttest_hand_formula():
    a = np.array([0.88, 0.87, 0.9, 0.86, 0.89])
    b = np.array([0.85, 0.86, 0.86, 0.85, 0.87])
    d = a - b
    k, n_train, n_test = 5, 8012, 2003
    t = d.mean() / math.sqrt((1 / k + n_test / n_train) * d.var(ddof=1))
    r = ms.corrected_ttest(a, b, n_train=n_train, n_test=n_test)
    assert r.statistic == pytest.approx(t)
    assert r.df == 4 and r.k == 5
    assert r.pvalue == pytest.approx(2 * st.t(4).sf(abs(t)))
    assert ms.corrected_ttest(a, b, n_train, n_test, alternative="greater").pvalue == pytest.approx(st.t(4).sf(t))
    # the correction only widens: p larger than the plain paired t-test
    assert r.pvalue > st.ttest_rel(a, b).pvalue
    # with no training-set overlap term it is the plain paired t-test
    plain = ms.corrected_ttest(a, b, n_train=1.0, n_test=1e-15)
    assert plain.pvalue == pytest.approx(st.ttest_rel(a, b).pvalue)


def test_corrected_ttest_without_variance_is_nan_or_infinite_and_refuses_one_pair():
    assert math.isnan(ms.corrected_ttest([0.0, 0.0, 0.0]).pvalue)
    r = ms.corrected_ttest([0.01, 0.01, 0.01])
    assert r.pvalue == 0.0 and math.isinf(r.statistic)
    with pytest.raises(ValueError):
        ms.corrected_ttest([0.01])


# --------------------------------------------------------------------------- Holm


def test_holm_adjusted_p_values_by_hand_are_monotone_capped_at_1_and_keep_nan():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone 0.06
    adj = ms.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adj, [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(ms.holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1
    out = ms.holm(pd.Series([0.01, np.nan, 0.02], index=list("abc")))
    assert list(out.index) == list("abc") and math.isnan(out["b"])
    np.testing.assert_allclose(out[["a", "c"]], [0.02, 0.02])


# --------------------------------------------------------------------------- compare


def test_compare_has_a_row_per_backbone_then_pooled_with_wins_exact_approx_ttest_and_holm_p():
    df = _grid({"alexnet": [0.01, 0.02, 0.03, 0.04, 0.05], "vgg19": [0.01, -0.02, 0.03, 0.04, 0.05]})
    df["n_folds"] = 5
    out = ms.compare(df, "metanet", "none")
    assert out["backbone"].tolist() == ["alexnet", "vgg19", "pooled"]
    al = out.iloc[0]
    assert al["n"] == 5 and al["wins"] == 5
    assert al["p_exact"] == 0.0625 and al["p_exact_greater"] == 0.03125
    assert round(al["p_approx"], 4) == 0.0431
    d = np.array([0.01, 0.02, 0.03, 0.04, 0.05])
    t = d.mean() / math.sqrt((1 / 5 + 1 / 4) * d.var(ddof=1))
    assert al["p_ttest"] == pytest.approx(2 * st.t(4).sf(t), rel=1e-6)
    np.testing.assert_allclose(out["p_exact_holm"].iloc[:2], ms.holm(out["p_exact"].iloc[:2].to_numpy()))
    assert out.iloc[2]["n"] == 10 and math.isnan(out.iloc[2]["p_ttest"])


def test_compare_uses_the_records_fold_sizes_for_the_ttest():
    df = _grid({"alexnet": [0.01, 0.02, 0.03, 0.04, 0.06]})
    df["n_train"], df["n_val"] = 600, 300  # ratio 1/2 instead of 5-fold's 1/4
    d = np.array([0.01, 0.02, 0.03, 0.04, 0.06])
    t = d.mean() / math.sqrt((1 / 5 + 300 / 600) * d.var(ddof=1))
    assert ms.compare(df).iloc[0]["p_ttest"] == pytest.approx(2 * st.t(4).sf(t), rel=1e-6)
    explicit = ms.compare(df, n_train=8012, n_test=2003).iloc[0]["p_ttest"]
    t2 = d.mean() / math.sqrt((1 / 5 + 2003 / 8012) * d.var(ddof=1))
    assert explicit == pytest.approx(2 * st.t(4).sf(t2), rel=1e-6)
