#!/usr/bin/env python3
"""Generate tests/data/stats_vectors.json: reference values for src/stats.rs.

Run once (from the crate root):
    pip install scipy statsmodels mpmath
    python3 scripts/reference_vectors.py              # writes the JSON
    python3 scripts/reference_vectors.py --monte-carlo  # also re-runs the mSPRT check below

References used (each case records which one in its "reference" field):
  two_proportion       statsmodels.stats.proportion.test_proportions_2indep(
                           compare='ratio', method='score', correction=False,
                           value=1+margin)  == Farrington-Manning score test.
                       margin == 0 is also cross-checked here against the pooled
                       statsmodels.stats.proportion.proportions_ztest.
  welch_t              scipy.stats.ttest_ind(x_t, (1+margin)*x_c, equal_var=False,
                           alternative=...) on the raw samples, cross-checked against
                       an independent sufficient-statistics formula with scipy.stats.t.
  mann_whitney_binned  scipy.stats.mannwhitneyu(expanded_t, expanded_c,
                           method='asymptotic', use_continuity=True, alternative=...)
  srm_chi_square       scipy.stats.chisquare([n_t, n_c], f_exp=[N*s, N*(1-s)])
  benjamini_hochberg   statsmodels.stats.multitest.multipletests(method='fdr_bh')
  msprt                mpmath (50 digits): closed form AND numerical integration of the
                       mixture likelihood ratio (mpmath.quad); the two must agree.

mSPRT Monte-Carlo sanity check (python3 scripts/reference_vectors.py --monte-carlo;
seed 20261128, 20000 replicates, 100 looks, 200 new N(delta,1) / N(0,1) observations per
arm per look, variance v = 1/n_t + 1/n_c known, tau^2 = 0.01, delta0 = 0). Reported is
P(running minimum of the always-valid p over the 100 looks <= alpha):
    true delta = 0 (H0 boundary)       two-sided   one-sided(greater)
        alpha = 0.05                     0.0226       0.0258
        alpha = 0.10                     0.0481       0.0527
        alpha = 0.20                     0.1017       0.1106
    true delta = -0.02 (inside the one-sided H0)      one-sided(greater)
        alpha = 0.05 / 0.10 / 0.20                     0.0034 / 0.0105 / 0.0296
Every crossing probability is <= alpha (Ville's inequality; discrete looks and the
mixture make it conservative), as required of an always-valid p-value.
"""
import json
import math
import platform
import sys
from pathlib import Path

import mpmath
import numpy as np
import scipy
import scipy.stats as st
import statsmodels
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportions_ztest, test_proportions_2indep

mpmath.mp.dps = 50
OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "stats_vectors.json"
ALT = {"greater": "larger", "less": "smaller"}  # statsmodels naming


def fin(v):
    v = float(v)
    return v if math.isfinite(v) else None


def result(stat, p):
    stat, p = fin(stat), fin(p)
    if stat is None or p is None:
        return None
    return {"statistic": stat, "p_value": p}


def close(a, b, rtol):
    return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-300)


# ---------------------------------------------------------------- two proportions
def two_proportion_cases():
    raw = [
        # x_t, n_t, x_c, n_c, margin, tail
        (120, 1000, 100, 1000, 0.0, "greater"),
        (120, 1000, 100, 1000, 0.0, "less"),
        (95, 1000, 100, 1000, -0.05, "less"),
        (80, 1000, 100, 1000, -0.05, "less"),
        (80, 1000, 100, 1000, -0.05, "greater"),
        (130, 1000, 100, 1000, 0.1, "greater"),
        (130, 1000, 100, 1000, 0.1, "less"),
        (10512, 1000000, 10000, 1000000, 0.0, "greater"),
        (10512, 1000000, 10000, 1000000, 0.1, "greater"),
        (9300, 1000000, 10000, 1000000, -0.05, "less"),
        (9300, 1000000, 10000, 1000000, 0.0, "less"),
        (3, 20, 1, 25, 0.0, "greater"),
        (3, 20, 1, 25, 0.1, "greater"),
        (1, 25, 3, 20, -0.05, "less"),
        (0, 50, 5, 50, 0.1, "less"),
        (0, 50, 5, 50, -0.05, "less"),
        (5, 50, 0, 50, 0.1, "greater"),
        (50, 50, 40, 50, 0.1, "greater"),
        (40, 50, 50, 50, -0.05, "less"),
        (7, 7000, 2, 3000, 0.0, "greater"),
        (700, 10000, 250, 3000, -0.05, "less"),
        # undefined (zero variance): statsmodels returns nan
        (0, 100, 0, 100, 0.0, "greater"),
        (0, 100, 0, 100, 0.1, "greater"),
        (100, 100, 100, 100, 0.0, "less"),
    ]
    out = []
    for x_t, n_t, x_c, n_c, m, tail in raw:
        with np.errstate(all="ignore"):
            r = test_proportions_2indep(
                x_t, n_t, x_c, n_c, value=1.0 + m, method="score", compare="ratio",
                alternative=ALT[tail], correction=False, return_results=True,
            )
        exp = result(r.statistic, r.pvalue)
        if m == 0.0 and exp is not None:
            z, p = proportions_ztest([x_t, x_c], [n_t, n_c], alternative=ALT[tail])
            assert close(z, exp["statistic"], 1e-12) and close(p, exp["p_value"], 1e-12)
        out.append(dict(x_t=x_t, n_t=n_t, x_c=x_c, n_c=n_c, margin=m, tail=tail,
                        expected=exp,
                        reference="statsmodels test_proportions_2indep(compare='ratio', "
                                  "method='score', correction=False, value=1+margin)"))
    return out


# ---------------------------------------------------------------- Welch t
def welch_formula(x_t, x_c, m, tail):
    """Independent implementation from sufficient statistics with scipy.stats.t."""
    n1, n2 = len(x_t), len(x_c)
    k = 1.0 + m
    s1, q1 = math.fsum(x_t), math.fsum(v * v for v in x_t)
    s2, q2 = math.fsum(x_c), math.fsum(v * v for v in x_c)
    m1, m2 = s1 / n1, s2 / n2
    v1, v2 = (q1 - s1 * m1) / (n1 - 1), (q2 - s2 * m2) / (n2 - 1)
    a, b = v1 / n1, k * k * v2 / n2
    t = (m1 - k * m2) / math.sqrt(a + b)
    df = (a + b) ** 2 / (a * a / (n1 - 1) + b * b / (n2 - 1))
    p = st.t.sf(t, df) if tail == "greater" else st.t.cdf(t, df)
    return t, p


def welch_cases():
    rng = np.random.default_rng(7)
    specs = [
        # n_t, n_c, generator, margin, tail
        (5, 6, ("normal", 10.0, 2.0, 10.5, 2.5), 0.0, "greater"),
        (5, 6, ("normal", 10.0, 2.0, 10.5, 2.5), 0.0, "less"),
        (3, 3, ("normal", 1.0, 1.0, 0.0, 3.0), 0.0, "greater"),
        (30, 40, ("normal", 100.0, 15.0, 95.0, 10.0), 0.1, "greater"),
        (30, 40, ("normal", 100.0, 15.0, 95.0, 10.0), 0.1, "less"),
        (30, 40, ("normal", 100.0, 15.0, 95.0, 10.0), -0.05, "less"),
        (200, 150, ("lognormal", 5.0, 0.8, 5.1, 0.9), 0.0, "greater"),
        (200, 150, ("lognormal", 5.0, 0.8, 5.1, 0.9), 0.1, "greater"),
        (200, 150, ("lognormal", 5.0, 0.8, 5.1, 0.9), -0.05, "less"),
        (20000, 20000, ("lognormal", 5.0, 0.5, 4.98, 0.5), 0.0, "greater"),
        (20000, 20000, ("lognormal", 5.0, 0.5, 4.98, 0.5), 0.1, "greater"),
        (20000, 20000, ("lognormal", 5.0, 0.5, 4.98, 0.5), -0.05, "less"),
        (50000, 5000, ("normal", 0.2, 1.0, 0.0, 1.0), 0.0, "greater"),
        (50000, 5000, ("normal", 0.2, 1.0, 0.0, 1.0), 0.0, "less"),
        (10, 1000, ("normal", 50.0, 5.0, 40.0, 5.0), 0.1, "greater"),
        (2, 2, ("normal", 1.0, 1.0, 1.0, 1.0), 0.1, "greater"),
    ]
    out = []
    for n_t, n_c, g, m, tail in specs:
        kind, mt, st_, mc, sc = g
        if kind == "normal":
            x_t, x_c = rng.normal(mt, st_, n_t), rng.normal(mc, sc, n_c)
        else:
            x_t, x_c = rng.lognormal(mt, st_, n_t), rng.lognormal(mc, sc, n_c)
        x_t, x_c = [float(v) for v in x_t], [float(v) for v in x_c]
        r = st.ttest_ind(np.array(x_t), (1.0 + m) * np.array(x_c), equal_var=False,
                         alternative=tail)
        t2, p2 = welch_formula(x_t, x_c, m, tail)
        assert close(r.statistic, t2, 1e-9) and close(r.pvalue, p2, 1e-9), (r, t2, p2)
        out.append(dict(n_t=n_t, sum_t=math.fsum(x_t), sumsq_t=math.fsum(v * v for v in x_t),
                        n_c=n_c, sum_c=math.fsum(x_c), sumsq_c=math.fsum(v * v for v in x_c),
                        margin=m, tail=tail, expected=result(r.statistic, r.pvalue),
                        reference="scipy ttest_ind(x_t, (1+margin)*x_c, equal_var=False); "
                                  "== sufficient-stat formula with scipy.stats.t"))
    # both variances zero: scipy gives nan -> None
    out.append(dict(n_t=4, sum_t=8.0, sumsq_t=16.0, n_c=4, sum_c=4.0, sumsq_c=4.0,
                    margin=0.0, tail="greater", expected=None,
                    reference="zero variance in both arms: scipy returns nan"))
    return out


# ---------------------------------------------------------------- Mann-Whitney
def mwu_cases():
    rng = np.random.default_rng(11)
    cases = [
        ([(1.0, 3, 1), (2.0, 2, 4), (3.0, 5, 2)], "greater"),
        ([(1.0, 3, 1), (2.0, 2, 4), (3.0, 5, 2)], "less"),
        ([(0.5, 1, 0), (1.5, 0, 1), (2.5, 1, 1), (9.0, 0, 1)], "greater"),
        ([(1.0, 400, 420), (2.0, 300, 310), (5.0, 200, 190), (10.0, 100, 80)], "greater"),
        ([(1.0, 400, 420), (2.0, 300, 310), (5.0, 200, 190), (10.0, 100, 80)], "less"),
        ([(0.0, 5000, 5100), (1.0, 0, 0), (2.0, 10, 3), (4.0, 0, 7)], "greater"),
        ([(3.0, 10, 0), (7.0, 0, 10)], "less"),
        ([(3.0, 10, 0), (7.0, 0, 10)], "greater"),
        ([(1.0, 1, 0), (2.0, 0, 1)], "less"),
    ]
    # latency-like HDR buckets: ~100 buckets, 60k + 50k observations, shifted treatment
    edges = np.unique(np.round(np.geomspace(1, 5000, 100)))
    lat_t = np.exp(rng.normal(4.02, 0.6, 60000))
    lat_c = np.exp(rng.normal(4.0, 0.6, 50000))
    ct = np.bincount(np.searchsorted(edges, lat_t), minlength=len(edges) + 1)
    cc = np.bincount(np.searchsorted(edges, lat_c), minlength=len(edges) + 1)
    vals = list(edges) + [1e9]
    hdr = [(float(v), int(a), int(b)) for v, a, b in zip(vals, ct, cc)]
    cases += [(hdr, "greater"), (hdr, "less")]
    # ordinal 1..5 ratings, heavy ties
    rt = rng.choice(5, 3000, p=[0.1, 0.2, 0.3, 0.25, 0.15])
    rc = rng.choice(5, 2500, p=[0.12, 0.2, 0.3, 0.24, 0.14])
    ratings = [(float(i + 1), int((rt == i).sum()), int((rc == i).sum())) for i in range(5)]
    cases += [(ratings, "greater"), (ratings, "less")]
    # no ties at all (each bin one observation)
    vals = np.sort(rng.normal(size=60))
    arm = rng.random(60) < 0.5
    notie = [(float(v), int(a), int(not a)) for v, a in zip(vals, arm)]
    cases += [(notie, "greater"), (notie, "less")]
    out = []
    for bins, tail in cases:
        x = np.concatenate([np.full(t, v) for v, t, _ in bins])
        y = np.concatenate([np.full(c, v) for v, _, c in bins])
        r = st.mannwhitneyu(x, y, alternative=tail, method="asymptotic", use_continuity=True)
        out.append(dict(bins=[list(b) for b in bins], tail=tail,
                        expected=result(r.statistic, r.pvalue),
                        reference="scipy mannwhitneyu(method='asymptotic', "
                                  "use_continuity=True) on expanded samples"))
    # all observations tied: zero variance. scipy returns p=1.0 (z=-inf); we return None.
    r = st.mannwhitneyu(np.full(5, 2.0), np.full(4, 2.0), alternative="greater",
                        method="asymptotic")
    out.append(dict(bins=[[2.0, 5, 4]], tail="greater", expected=None,
                    reference="all tied: zero variance -> None (scipy: U1=%r, p=%r)"
                              % (float(r.statistic), float(r.pvalue))))
    return out


# ---------------------------------------------------------------- SRM
def srm_cases():
    raw = [(50000, 50000, 0.5), (50310, 49690, 0.5), (5012, 4988, 0.5),
           (10_050_000, 9_950_000, 0.5), (1000, 9000, 0.1), (1100, 8900, 0.1),
           (1, 99, 0.01), (5, 95, 0.01), (200, 800, 0.2), (40000, 160500, 0.2),
           (7, 3, 0.5), (0, 10, 0.5), (3_000_000, 1_000_000, 0.75)]
    out = []
    for n_t, n_c, s in raw:
        nn = n_t + n_c
        r = st.chisquare([float(n_t), float(n_c)], f_exp=[nn * s, nn * (1.0 - s)])
        out.append(dict(n_t=n_t, n_c=n_c, expected_t_share=s,
                        expected=result(r.statistic, r.pvalue),
                        reference="scipy chisquare([n_t, n_c], f_exp=[N*s, N*(1-s)])"))
    return out


# ---------------------------------------------------------------- BH
def bh_cases():
    raw = [
        ([0.01, 0.04, 0.03, 0.2, 0.005], 0.05),
        ([0.01, 0.04, 0.03, 0.2, 0.005], 0.1),
        ([0.02, 0.02, 0.02, 0.02], 0.05),
        ([0.03, 0.01, 0.03, 0.5, 0.03, 0.01], 0.05),
        ([0.9, 0.8, 0.7], 0.05),
        ([0.0, 1.0, 0.5, 0.0], 0.05),
        ([0.049], 0.05),
        ([0.051], 0.05),
        ([], 0.05),
        ([1e-12, 3e-5, 0.011, 0.012, 0.013, 0.014, 0.6, 0.04, 0.021, 0.0241], 0.05),
        ([0.04, 0.04, 0.04, 0.04, 0.5], 0.05),
        (list(np.round(np.random.default_rng(3).uniform(0, 0.2, 25), 4)), 0.1),
    ]
    out = []
    for p, q in raw:
        p = [float(v) for v in p]
        if p:
            rej, adj, _, _ = multipletests(p, alpha=q, method="fdr_bh")
            rej, adj = [bool(v) for v in rej], [float(v) for v in adj]
        else:
            rej, adj = [], []
        out.append(dict(p_values=p, q=q, rejected=rej, adjusted=adj,
                        reference="statsmodels multipletests(method='fdr_bh')"))
    return out


# ---------------------------------------------------------------- Student t tail
def student_t_cases():
    """scipy.stats.t.sf grid for the crate's own Student-t tail (student_t_sf)."""
    out = []
    for df in (0.7, 1.0, 2.5, 10.0, 137.3, 1e3, 2.5e4, 49999.0, 5e4, 1e5, 1e6, 1e8, 1e11):
        for t in (-3.0, -0.5, 0.01, 0.5, 1.73, 2.5, 6.0, 15.0):
            out.append(dict(t=t, df=df, sf=float(st.t.sf(t, df)),
                            reference="scipy.stats.t.sf"))
    return out


# ---------------------------------------------------------------- mSPRT
def msprt_ref(d_hat, d0, v, tau2):
    d_hat, d0, v, tau2 = (mpmath.mpf(x) for x in (d_hat, d0, v, tau2))
    d = d_hat - d0
    lam = mpmath.sqrt(v / (v + tau2)) * mpmath.exp(tau2 * d * d / (2 * v * (v + tau2)))
    # Independent check: Lambda = int exp((th*d - th^2/2)/v) dN(0,tau2)(th)
    tau = mpmath.sqrt(tau2)

    def integrand(th):
        return mpmath.exp((th * d - th * th / 2) / v) * mpmath.npdf(th, 0, tau)

    peak = d * tau2 / (v + tau2)  # posterior mean; integrand mass is around it
    w = 12 * mpmath.sqrt(v * tau2 / (v + tau2))
    lam_q = mpmath.quad(integrand, [-mpmath.inf, peak - w, peak, peak + w, mpmath.inf])
    assert abs(lam_q / lam - 1) < mpmath.mpf(10) ** -20, (lam, lam_q)
    # one-sided mixture: half-normal prior on the alternative side (density 2*N(0,tau2)).
    half = {}
    for tail, sgn in (("greater", 1), ("less", -1)):
        lo, hi = (0, mpmath.inf) if sgn > 0 else (-mpmath.inf, 0)
        pts = sorted({lo, hi, min(max(peak, lo), hi)}, key=lambda z: float(z))
        lam1 = 2 * mpmath.quad(integrand, pts)
        closed = 2 * lam * mpmath.ncdf(sgn * d * tau / mpmath.sqrt(v * (v + tau2)))
        assert abs(lam1 / closed - 1) < mpmath.mpf(10) ** -20, (lam1, closed)
        half[tail] = float(min(1, 1 / lam1))
    return float(min(1, 1 / lam)), half


def msprt_cases():
    raw = [  # delta_hat, delta0, variance, tau2
        (0.0, 0.0, 1e-4, 1e-3), (0.01, 0.0, 1e-4, 1e-3), (-0.01, 0.0, 1e-4, 1e-3),
        (0.05, 0.0, 1e-4, 1e-3), (-0.05, 0.0, 1e-4, 1e-3), (0.03, 0.01, 1e-4, 1e-4),
        (0.5, 0.0, 0.01, 1.0), (2.0, 1.0, 0.25, 0.5), (0.002, 0.0, 1e-6, 1e-5),
        (0.0021, 0.0, 1e-7, 1e-3), (-3.0, -1.0, 0.1, 0.01), (0.02, 0.0, 1e-4, 1e-6),
        (0.08, 0.0, 1e-4, 1e-2),
    ]
    out = []
    for dh, d0, v, t2 in raw:
        two, half = msprt_ref(dh, d0, v, t2)
        out.append(dict(delta_hat=dh, delta0=d0, variance=v, tau2=t2, two_sided=two,
                        greater=half["greater"], less=half["less"],
                        reference="mpmath closed form == mpmath.quad mixture integral"))
    return out


def monte_carlo(seed=20261128, reps=20000, looks=100, batch=200, tau2=0.01, true=0.0):
    """Running-minimum always-valid p under H0 (see module docstring for the results)."""
    rng = np.random.default_rng(seed)
    # Batch means of N(true,1) / N(0,1) samples: sums are exact sufficient statistics.
    st_ = np.cumsum(rng.normal(true * batch, math.sqrt(batch), (reps, looks)), axis=1)
    sc = np.cumsum(rng.normal(0.0, math.sqrt(batch), (reps, looks)), axis=1)
    n = batch * np.arange(1, looks + 1)
    d = (st_ - sc) / n
    v = 2.0 / n
    x2 = tau2 * d * d / (2 * v * (v + tau2))
    loglam = 0.5 * np.log(v / (v + tau2)) + x2
    p_two = np.minimum(1.0, np.exp(-loglam)).min(axis=1)
    z = d * math.sqrt(tau2) / np.sqrt(v * (v + tau2))
    loglam1 = np.log(2.0) + loglam + st.norm.logcdf(z)
    p_one = np.minimum(1.0, np.exp(-loglam1)).min(axis=1)
    for a in (0.05, 0.1, 0.2):
        print(f"true delta={true} alpha={a}: two-sided {np.mean(p_two <= a):.4f} "
              f"one-sided(greater) {np.mean(p_one <= a):.4f}")


def main():
    if "--monte-carlo" in sys.argv:
        monte_carlo()
        monte_carlo(true=-0.02)
    data = {
        "meta": {
            "generated_by": "scripts/reference_vectors.py",
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "statsmodels": statsmodels.__version__,
            "mpmath": mpmath.__version__,
        },
        "two_proportion": two_proportion_cases(),
        "welch_t": welch_cases(),
        "mann_whitney_binned": mwu_cases(),
        "srm_chi_square": srm_cases(),
        "benjamini_hochberg": bh_cases(),
        "msprt": msprt_cases(),
        "student_t_sf": student_t_cases(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {OUT} ({sum(len(v) for k, v in data.items() if k != 'meta')} cases)")


if __name__ == "__main__":
    main()
