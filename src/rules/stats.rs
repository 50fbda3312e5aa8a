//! Pure-function statistics for guardrail decisions.
//!
//! Every test is one-sided: [`Tail::Greater`] means "H1: treatment is larger than the
//! (margin-shifted) control", [`Tail::Less`] the mirror image. Functions returning
//! [`Option`] give `None` whenever the test is undefined: an empty arm, zero variance,
//! non-finite input or an out-of-range parameter. Nothing here panics or allocates
//! beyond the returned vectors. Reference values come from scipy/statsmodels
//! (`scripts/reference_vectors.py`); the unit tests assert agreement to 1e-9 relative
//! (observed: ≤ 5e-11, limited by statrs' normal CDF, which is accurate to ~1e-10).

use statrs::distribution::{ChiSquared, ContinuousCDF, Normal};
use statrs::function::gamma::ln_gamma;

/// Result of a one-sided test: the test statistic and its p-value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TestResult {
    pub statistic: f64,
    pub p_value: f64,
}

/// Direction of the alternative hypothesis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// H1: treatment > control * (1 + margin).
    Greater,
    /// H1: treatment < control * (1 + margin).
    Less,
}

fn normal_p(z: f64, tail: Tail) -> f64 {
    let n = Normal::standard();
    match tail {
        Tail::Greater => n.sf(z),
        Tail::Less => n.cdf(z),
    }
}

fn valid_margin(margin: f64) -> bool {
    margin.is_finite() && margin > -1.0
}

/// Two-proportion score test with a relative margin (Farrington–Manning).
///
/// Tests H0: p_t <= R·p_c against H1: p_t > R·p_c (`Tail::Greater`), or H0: p_t >= R·p_c
/// against H1: p_t < R·p_c (`Tail::Less`), where R = 1 + margin (margin > -1; e.g. -0.05
/// for "must not drop by more than 5%"). The statistic is
/// z = (p̂_t − R·p̂_c) / sqrt(p̃_t(1−p̃_t)/n_t + R²·p̃_c(1−p̃_c)/n_c),
/// where p̃ are the maximum-likelihood estimates under the constraint p̃_t = R·p̃_c
/// (the smaller root of the Farrington–Manning quadratic). For margin = 0 the
/// constrained estimate is the pooled proportion, so this is exactly the classic pooled
/// two-proportion z-test; for margin ≠ 0 the variance is evaluated at the null boundary
/// (better type-I error control than the unpooled Wald variance). The p-value is from
/// the standard normal. Matches statsmodels `test_proportions_2indep(compare='ratio',
/// method='score', correction=False, value=1+margin)`. Returns `None` if an arm is
/// empty, a count exceeds its total, the margin is invalid or the null variance is zero
/// (e.g. 0 or 100% successes in both arms).
pub fn two_proportion(
    x_t: u64,
    n_t: u64,
    x_c: u64,
    n_c: u64,
    margin: f64,
    tail: Tail,
) -> Option<TestResult> {
    if n_t == 0 || n_c == 0 || x_t > n_t || x_c > n_c || !valid_margin(margin) {
        return None;
    }
    let r = 1.0 + margin;
    let (x1, n1, x0, n0) = (x_t as f64, n_t as f64, x_c as f64, n_c as f64);
    let (p1, p0) = (x1 / n1, x0 / n0);
    let (prop1, prop0) = if r == 1.0 {
        let pooled = (x1 + x0) / (n1 + n0);
        (pooled, pooled)
    } else {
        // Constrained MLE: a·p² + b·p + c = 0, smaller root in the stable form 2c/(−b+√D).
        let a = (n1 + n0) * r;
        let b = -(n1 * r + x1 + n0 + x0 * r);
        let c = x1 + x0;
        let disc = (b * b - 4.0 * a * c).max(0.0);
        let p = 2.0 * c / (-b + disc.sqrt());
        (p * r, p)
    };
    let var = prop1 * (1.0 - prop1) / n1 + r * r * prop0 * (1.0 - prop0) / n0;
    if !(var > 0.0 && var.is_finite()) {
        return None;
    }
    let z = (p1 - r * p0) / var.sqrt();
    Some(TestResult {
        statistic: z,
        p_value: normal_p(z, tail),
    })
}

/// Welch's unequal-variance t-test from sufficient statistics, with a relative margin.
///
/// Inputs per arm: count n, Σx and Σx². Means m = Σx/n, variances
/// s² = (Σx² − Σx·m)/(n−1) (clamped at 0; note this one-pass form loses precision when
/// the coefficient of variation is tiny). With k = 1 + margin (margin > -1) the
/// control term is scaled by k: t = (m_t − k·m_c) / sqrt(a + b), a = s_t²/n_t,
/// b = k²·s_c²/n_c, and the Welch–Satterthwaite degrees of freedom are
/// ν = (a+b)² / (a²/(n_t−1) + b²/(n_c−1)). This is exactly Welch's test on the samples
/// (x_t, k·x_c), i.e. scipy `ttest_ind(x_t, k*x_c, equal_var=False, alternative=...)`
/// (for margin = 0 plain `ttest_ind(x_t, x_c, equal_var=False)`). The p-value uses an
/// accurate Student-t tail ([`student_t_sf`]). `None` if an arm has fewer than 2
/// observations, an input is non-finite, or both variances are zero.
/// Sample variance from (n, Σx, Σx²): (Σx² − Σx·m)/(n−1), clamped at 0; n ≥ 2.
pub fn sample_variance(n: u64, sum: f64, sumsq: f64) -> f64 {
    let n = n as f64;
    ((sumsq - sum * (sum / n)) / (n - 1.0)).max(0.0)
}

#[allow(clippy::too_many_arguments)]
pub fn welch_t(
    n_t: u64,
    sum_t: f64,
    sumsq_t: f64,
    n_c: u64,
    sum_c: f64,
    sumsq_c: f64,
    margin: f64,
    tail: Tail,
) -> Option<TestResult> {
    let finite = [sum_t, sumsq_t, sum_c, sumsq_c]
        .iter()
        .all(|v| v.is_finite());
    if n_t < 2 || n_c < 2 || !finite || !valid_margin(margin) {
        return None;
    }
    let k = 1.0 + margin;
    let (n1, n2) = (n_t as f64, n_c as f64);
    let (m1, m2) = (sum_t / n1, sum_c / n2);
    let (v1, v2) = (
        sample_variance(n_t, sum_t, sumsq_t),
        sample_variance(n_c, sum_c, sumsq_c),
    );
    let (a, b) = (v1 / n1, k * k * v2 / n2);
    let se2 = a + b;
    if !(se2 > 0.0 && se2.is_finite()) {
        return None;
    }
    let t = (m1 - k * m2) / se2.sqrt();
    let (fa, fb) = (a / se2, b / se2);
    let df = 1.0 / (fa * fa / (n1 - 1.0) + fb * fb / (n2 - 1.0));
    let p = match tail {
        Tail::Greater => student_t_sf(t, df),
        Tail::Less => student_t_sf(-t, df),
    };
    if !t.is_finite() || p.is_nan() {
        return None;
    }
    Some(TestResult {
        statistic: t,
        p_value: p,
    })
}

/// Survival function P(T > t) of Student's t with `df` > 0 degrees of freedom.
///
/// For ν < 5·10⁴: P(T > |t|) = ½·I_h(ν/2, ½), h = ν/(ν+t²), by a continued fraction
/// (modified Lentz) in which h, 1−h and their logs are formed without cancellation and
/// ln B(ν/2, ½) uses a Stirling-series difference. For ν ≥ 5·10⁴ (where that continued
/// fraction loses ~ν·ε) Hill's normalizing expansion (ACM Algorithm 395) is used, whose
/// truncation error there is < 1e-13. Measured relative error vs scipy: ~1e-12 for
/// ν < 5·10⁴, and for larger ν that of statrs' normal tail (≤ 1e-10). (statrs'
/// `StudentsT` degrades to ~4e-9 at ν = 10⁶ and ~1e-7 at ν = 10⁸, too coarse for the
/// 1e-9 reference tests.) Returns NaN for invalid input.
pub fn student_t_sf(t: f64, df: f64) -> f64 {
    if t.is_nan() || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    if df.is_infinite() {
        return Normal::standard().sf(t);
    }
    let t2 = t * t;
    if df >= 5e4 {
        let a = df - 0.5;
        let b = 48.0 * a * a;
        let y = a * (t2 / df).ln_1p();
        if y > 1e6 {
            return if t > 0.0 { 0.0 } else { 1.0 };
        }
        let poly = (((-0.4 * y - 3.3) * y - 24.0) * y - 85.5) / (0.8 * y * y + 100.0 + b);
        let z = ((poly + y + 3.0) / b + 1.0) * y.sqrt();
        return Normal::standard().sf(if t >= 0.0 { z } else { -z });
    }
    let upper = if t2 == 0.0 {
        0.5
    } else {
        // r = ν/t²; h = r/(1+r), w = 1−h = 1/(1+r); ln h = −ln1p(1/r), ln w = −ln1p(r).
        let r = df / t2;
        let (h, w) = (r / (1.0 + r), 1.0 / (1.0 + r));
        0.5 * beta_reg(0.5 * df, 0.5, h, w, -(1.0 / r).ln_1p(), -r.ln_1p())
    };
    if t >= 0.0 { upper } else { 1.0 - upper }
}

/// I_x(a, b) for b = ½, given x, y = 1−x and their logarithms (all accurate).
fn beta_reg(a: f64, b: f64, x: f64, y: f64, ln_x: f64, ln_y: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if y <= 0.0 {
        return 1.0;
    }
    let front = (a * ln_x + b * ln_y - ln_beta_half(a)).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(a, b, x) / a
    } else {
        1.0 - front * beta_cf(b, a, y) / b
    }
}

/// ln B(a, ½) = ln Γ(½) + ln Γ(a) − ln Γ(a+½), cancellation-free for large a.
fn ln_beta_half(a: f64) -> f64 {
    const LN_GAMMA_HALF: f64 = 0.572_364_942_924_700_1; // ln √π
    if a < 10.0 {
        return LN_GAMMA_HALF + ln_gamma(a) - ln_gamma(a + 0.5);
    }
    // Stirling: ln Γ(z) = (z−½)ln z − z + ½ln 2π + S(z); the difference of the
    // leading terms is −½ln a − a·ln1p(1/(2a)) + ½.
    let s = |z: f64| {
        let z2 = z * z;
        (1.0 / 12.0
            + (-1.0 / 360.0 + (1.0 / 1260.0 + (-1.0 / 1680.0 + 1.0 / (1188.0 * z2)) / z2) / z2)
                / z2)
            / z
    };
    let lead = (0.5 - a * (0.5 / a).ln_1p()) - 0.5 * a.ln();
    LN_GAMMA_HALF + lead + (s(a) - s(a + 0.5))
}

/// Continued fraction for the incomplete beta function (modified Lentz).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let guard = |v: f64| if v.abs() < TINY { TINY } else { v };
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 / guard(1.0 - qab * x / qap);
    let mut h = d;
    for m in 1..=20_000u32 {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 / guard(1.0 + aa * d);
        c = guard(1.0 + aa / c);
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 / guard(1.0 + aa * d);
        c = guard(1.0 + aa / c);
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() <= 2.0 * f64::EPSILON {
            break;
        }
    }
    h
}

/// Mann–Whitney U test on binned (histogram) data, normal approximation.
///
/// `bins` holds `(value, count_t, count_c)` sorted ascending by value (e.g. HDR-histogram
/// buckets shared by both arms); all observations in one bin are ties, and adjacent bins
/// with equal values are merged. With n = n_t + n_c, U₁ = Σ_bins c_t·(C_below + c_c/2)
/// (pairs where treatment is larger, ties count ½; computed exactly in integers),
/// μ = n_t·n_c/2 and the tie-corrected σ = sqrt(n_t·n_c/12 · ((n+1) − Σ(t³−t)/(n(n−1)))),
/// t being the bin totals. `Tail::Greater` (H1: treatment stochastically greater) uses
/// z = (U₁ − μ − ½)/σ, `Tail::Less` uses z = (U₂ − μ − ½)/σ with U₂ = n_t·n_c − U₁;
/// p = P(Z > z) (continuity correction toward the null). `statistic` is U₁ — scipy's
/// convention, so it matches `scipy.stats.mannwhitneyu(x_t, x_c, alternative=...,
/// method='asymptotic', use_continuity=True)` on the expanded samples. `None` if an arm
/// is empty, a value is NaN, values are not ascending, or all observations are tied
/// (σ = 0; scipy reports p = 1 there).
pub fn mann_whitney_binned(bins: &[(f64, u64, u64)], tail: Tail) -> Option<TestResult> {
    let (mut n_t, mut n_c, mut c_below, mut u1_twice) = (0u128, 0u128, 0u128, 0u128);
    let mut tie_term = 0.0f64;
    let mut i = 0;
    while i < bins.len() {
        let value = bins[i].0;
        if value.is_nan() || (i > 0 && value < bins[i - 1].0) {
            return None;
        }
        let (mut ct, mut cc) = (0u128, 0u128);
        while i < bins.len() && bins[i].0 == value {
            ct += u128::from(bins[i].1);
            cc += u128::from(bins[i].2);
            i += 1;
        }
        u1_twice = u1_twice.checked_add(ct.checked_mul(2 * c_below + cc)?)?;
        let tot = (ct + cc) as f64;
        tie_term += tot * tot * tot - tot;
        c_below += cc;
        n_t += ct;
        n_c += cc;
    }
    if n_t == 0 || n_c == 0 {
        return None;
    }
    let (n1, n2) = (n_t as f64, n_c as f64);
    let n = n1 + n2;
    let u1 = u1_twice as f64 / 2.0;
    let s = (n1 * n2 / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)))).sqrt();
    if !(s > 0.0 && s.is_finite()) {
        return None;
    }
    let u = match tail {
        Tail::Greater => u1,
        Tail::Less => n1 * n2 - u1,
    };
    let z = (u - n1 * n2 / 2.0 - 0.5) / s;
    Some(TestResult {
        statistic: u1,
        p_value: Normal::standard().sf(z).clamp(0.0, 1.0),
    })
}

/// Sample-ratio-mismatch check: Pearson chi-square goodness of fit (1 degree of freedom).
///
/// With N = n_t + n_c and expected counts e_t = N·s, e_c = N·(1−s) for the configured
/// treatment share s ∈ (0, 1): χ² = (n_t−e_t)²/e_t + (n_c−e_c)²/e_c, p = P(χ²₁ > χ²).
/// Matches `scipy.stats.chisquare([n_t, n_c], f_exp=[N*s, N*(1-s)])`. `None` if N = 0
/// or s is not strictly between 0 and 1.
pub fn srm_chi_square(n_t: u64, n_c: u64, expected_t_share: f64) -> Option<TestResult> {
    let s = expected_t_share;
    let total = n_t as f64 + n_c as f64;
    if !(s > 0.0 && s < 1.0) || total == 0.0 {
        return None;
    }
    let (e_t, e_c) = (total * s, total * (1.0 - s));
    let (d_t, d_c) = (n_t as f64 - e_t, n_c as f64 - e_c);
    let stat = d_t * d_t / e_t + d_c * d_c / e_c;
    let chi2 = ChiSquared::new(1.0).ok()?;
    Some(TestResult {
        statistic: stat,
        p_value: chi2.sf(stat),
    })
}

/// Sorts indices by p-value (NaN treated as 1.0) and returns (order, sorted p-values).
fn sorted_p(p_values: &[f64]) -> (Vec<usize>, Vec<f64>) {
    let clean = |p: f64| if p.is_nan() { 1.0 } else { p };
    let mut order: Vec<usize> = (0..p_values.len()).collect();
    order.sort_by(|&a, &b| clean(p_values[a]).total_cmp(&clean(p_values[b])));
    let sorted = order.iter().map(|&i| clean(p_values[i])).collect();
    (order, sorted)
}

/// Benjamini–Hochberg step-up procedure controlling the false discovery rate at `q`.
///
/// Sort the m p-values ascending, p₍₁₎ ≤ … ≤ p₍ₘ₎; find the largest k with
/// p₍ₖ₎ ≤ (k/m)·q and reject the hypotheses with the k smallest p-values. Returns one
/// flag per input, in input order. NaN p-values are treated as 1.0 (never rejected,
/// still counted in m). Matches `statsmodels.stats.multitest.multipletests(p,
/// alpha=q, method='fdr_bh')[0]`.
pub fn benjamini_hochberg(p_values: &[f64], q: f64) -> Vec<bool> {
    let (order, sorted) = sorted_p(p_values);
    let m = sorted.len() as f64;
    let k = sorted
        .iter()
        .enumerate()
        .rposition(|(i, &p)| p <= (i + 1) as f64 / m * q);
    let mut out = vec![false; p_values.len()];
    if let Some(k) = k {
        for &i in &order[..=k] {
            out[i] = true;
        }
    }
    out
}

/// Benjamini–Hochberg adjusted p-values ("q-values"), in input order.
///
/// adj₍ᵢ₎ = min over j ≥ i of p₍ⱼ₎·m/j, capped at 1; hypothesis i is rejected at FDR q
/// exactly when adj_i ≤ q (up to rounding). NaN inputs are treated as 1.0. Matches
/// `multipletests(p, method='fdr_bh')[1]` (statsmodels' `pvals_corrected`).
pub fn bh_adjusted(p_values: &[f64]) -> Vec<f64> {
    let (order, sorted) = sorted_p(p_values);
    let m = sorted.len() as f64;
    let mut out = vec![0.0; p_values.len()];
    let mut running = f64::INFINITY;
    for (rank, &i) in order.iter().enumerate().rev() {
        running = running.min(sorted[rank] / ((rank + 1) as f64 / m));
        out[i] = running.min(1.0);
    }
    out
}

/// ln Λ of the normal-mixture SPRT, or `None` for invalid input.
fn msprt_log_lambda(delta_hat: f64, delta0: f64, variance: f64, tau2: f64) -> Option<f64> {
    let ok = [delta_hat, delta0, variance, tau2]
        .iter()
        .all(|v| v.is_finite());
    if !ok || variance <= 0.0 || tau2 < 0.0 {
        return None;
    }
    let z = (delta_hat - delta0) / variance.sqrt();
    let rho = tau2 / (variance + tau2);
    let log_lambda = -0.5 * (tau2 / variance).ln_1p() + 0.5 * rho * z * z;
    (!log_lambda.is_nan()).then_some(log_lambda)
}

/// A ratio of unit sums R = Σx/Σy with its delta-method variance (per-unit statistics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatioEstimate {
    pub ratio: f64,
    pub variance: f64,
    /// Non-empty unit buckets.
    pub groups: usize,
    /// Σy: the denominator count (events, started checkouts...).
    pub denominator: f64,
}

/// The ratio of two sums over units and its variance, from per-bucket totals.
///
/// Every unit lies in exactly one bucket (by its hash), so the bucket totals
/// (x_b, y_b) are independent and identically distributed whatever the correlation
/// between one unit's events. The linearised (delta-method) variance of R = X/Y is
/// V = G/(G−1) · Σ_b (x_b − R·y_b)² / Y², G the number of non-empty buckets: the
/// cluster-robust variance with buckets as clusters, which estimates the per-unit
/// delta-method variance n/(n−1) · Σ_u (x_u − R·y_u)² / Y² (Deng, Knoblich & Lu 2018)
/// with G − 1 degrees of freedom. A rate (errors per started checkout) and a mean
/// (x = value, y = 1) are both such ratios. `None` if Y ≤ 0, G < 2 or non-finite input.
pub fn ratio_estimate(x: &[f64], y: &[f64]) -> Option<RatioEstimate> {
    let (sx, sy): (f64, f64) = (x.iter().sum(), y.iter().sum());
    if sy.is_nan() || sy <= 0.0 || !sx.is_finite() || !sy.is_finite() {
        return None;
    }
    let r = sx / sy;
    let (variance, g) = bucket_variance(x, y, r)?;
    Some(RatioEstimate {
        ratio: r,
        variance,
        groups: g,
        denominator: sy,
    })
}

/// The Wald form of the ratio test (each arm's variance around its own ratio), kept as
/// the reference the vectors check; the engine judges with [`ratio_test_null`].
/// One-sided z-test of two ratio estimates with a relative margin: H1 R_T > (1+m)·R_C
/// (`Greater`) or R_T < (1+m)·R_C (`Less`); z = (R_T − r·R_C)/sqrt(V_T + r²·V_C),
/// r = 1 + margin. `None` for an invalid margin or zero variance.
pub fn ratio_test(
    t: &RatioEstimate,
    c: &RatioEstimate,
    margin: f64,
    tail: Tail,
) -> Option<TestResult> {
    if !valid_margin(margin) {
        return None;
    }
    let r = 1.0 + margin;
    let var = t.variance + r * r * c.variance;
    if !(var > 0.0 && var.is_finite()) {
        return None;
    }
    let z = (t.ratio - r * c.ratio) / var.sqrt();
    Some(TestResult {
        statistic: z,
        p_value: normal_p(z, tail),
    })
}

/// The variance of a ratio's bucket totals centred on `center` rather than on the ratio
/// itself: G/(G−1) · Σ_b (x_b − center·y_b)² / Y². At center = R it is
/// [`ratio_estimate`]'s variance; at the null-constrained ratio it is the score-test
/// form, defined (and not 0) for an arm without a single numerator event.
pub fn centred_variance(x: &[f64], y: &[f64], center: f64) -> Option<f64> {
    bucket_variance(x, y, center).map(|(v, _)| v)
}

/// G/(G−1) · Σ_b (x_b − center·y_b)² / Y² and G, over the non-empty buckets; `None`
/// if G < 2 or Y ≤ 0.
fn bucket_variance(x: &[f64], y: &[f64], center: f64) -> Option<(f64, usize)> {
    let sy: f64 = y.iter().sum();
    let mut g = 0usize;
    let mut ss = 0.0;
    for (xb, yb) in x.iter().zip(y) {
        if *xb != 0.0 || *yb != 0.0 {
            g += 1;
            let d = xb - center * yb;
            ss += d * d;
        }
    }
    if g < 2 || sy.is_nan() || sy <= 0.0 {
        return None;
    }
    let gf = g as f64;
    Some((gf / (gf - 1.0) * ss / (sy * sy), g))
}

/// The two-sample ratio test of H1: R_T `tail` (1+m)·R_C with the variance evaluated
/// under the null (a clustered score test): the centres are the constrained estimates
/// R_C* = (X_T + X_C)/(r·Y_T + Y_C) and R_T* = r·R_C* (the Poisson maximum likelihood
/// under H0), z = (R_T − r·R_C)/sqrt(V_T(R_T*) + r²·V_C(R_C*)). Like the
/// Farrington–Manning test it replaces, it does not explode when an arm has no event in
/// a small cohort's window (the Wald variance of that arm would be 0). Returns the
/// statistic, its p-value, the effect δ = R_T − r·R_C and the null variance.
pub fn ratio_test_null(
    (xt, yt): (&[f64], &[f64]),
    (xc, yc): (&[f64], &[f64]),
    margin: f64,
    tail: Tail,
) -> Option<(TestResult, f64, f64)> {
    if !valid_margin(margin) {
        return None;
    }
    let r = 1.0 + margin;
    let (sxt, syt): (f64, f64) = (xt.iter().sum(), yt.iter().sum());
    let (sxc, syc): (f64, f64) = (xc.iter().sum(), yc.iter().sum());
    if syt.is_nan() || syt <= 0.0 || syc.is_nan() || syc <= 0.0 {
        return None;
    }
    let rc0 = (sxt + sxc) / (r * syt + syc);
    let var = centred_variance(xt, yt, r * rc0)? + r * r * centred_variance(xc, yc, rc0)?;
    if !(var > 0.0 && var.is_finite()) {
        return None;
    }
    let delta = sxt / syt - r * sxc / syc;
    let z = delta / var.sqrt();
    Some((
        TestResult {
            statistic: z,
            p_value: normal_p(z, tail),
        },
        delta,
        var,
    ))
}

/// How far one arm's earlier windows predict this window, over the unit buckets: the
/// regression coefficient θ = Σ_b g_b·g′_b / Σ_b g′_b², g_b = (x_b − R·y_b)/Y each
/// period's linearised bucket term around its own ratio R, clamped to [0, 1]. `None`
/// when either period has no denominator or the earlier one no spread.
pub fn persistence(now: (&[f64], &[f64]), earlier: (&[f64], &[f64])) -> Option<f64> {
    let (sy_now, sy_earlier): (f64, f64) = (now.1.iter().sum(), earlier.1.iter().sum());
    if !(sy_now > 0.0 && sy_earlier > 0.0) {
        return None;
    }
    let r_now = now.0.iter().sum::<f64>() / sy_now;
    let r_earlier = earlier.0.iter().sum::<f64>() / sy_earlier;
    let (mut cov, mut var) = (0.0, 0.0);
    for b in 0..now.0.len().min(earlier.0.len()) {
        let g = (now.0[b] - r_now * now.1[b]) / sy_now;
        let g_earlier = (earlier.0[b] - r_earlier * earlier.1[b]) / sy_earlier;
        cov += g * g_earlier;
        var += g_earlier * g_earlier;
    }
    (var > 0.0 && cov.is_finite()).then(|| (cov / var).clamp(0.0, 1.0))
}

/// One arm of an innovation test: its bucket totals in this window and in the band's
/// earlier windows, its weight in the effect and the null centre of each ratio.
struct InnovationArm<'a> {
    now: (&'a [f64], &'a [f64]),
    earlier: (&'a [f64], &'a [f64]),
    weight: f64,
    centre_now: f64,
    centre_earlier: f64,
}

/// The innovation of this window's effect given the band's earlier windows, and its
/// one-sided test. Users keep their arm for the whole band, so an arm that drew more
/// error-prone users by chance leans the same way in every window: the windows' effects
/// share a component, and scores that treat them as independent add it up again and
/// again. With δ this window's effect and δ′ the earlier windows' (same units, same
/// buckets), the innovation is I = δ − θ·δ′ with θ = Cov(δ, δ′)/Var(δ′) ∈ [0, 1], the
/// regression of this window on the band so far ([`persistence`]): in a random arm
/// effect model, the shrinkage factor of the best predictor, so under the null the
/// windows' innovations are uncorrelated (the prediction-error decomposition) and a
/// detector that multiplies their likelihood ratios keeps its level. θ is estimated on
/// control where there is one: a regression multiplies the treatment's bucket
/// deviations and would inflate it there, while under the null both arms, drawn from
/// the same units, share it. Var(I) = Σ_arms w²·G/(G−1)·Σ_b (h_b − θ·h′_b)², h the
/// null-centred linearised bucket terms of [`ratio_test_null`], G the buckets non-empty
/// in either period. With θ = 0 (no persistence) it is this window's own test. A regression that began before this
/// window keeps (1 − θ·s) of its effect here, s the earlier windows' share it covers;
/// the band's mSPRT, on the cumulative effect with clustered variance, keeps it whole.
/// `None` if an arm has no denominator in a period, fewer than two buckets, or no
/// variance.
fn innovation(
    arms: &[InnovationArm<'_>],
    theta: f64,
    delta_now: f64,
    delta_earlier: f64,
    tail: Tail,
) -> Option<TestResult> {
    let mut variance = 0.0;
    for a in arms {
        let (sy_now, sy_earlier): (f64, f64) = (a.now.1.iter().sum(), a.earlier.1.iter().sum());
        if !(sy_now > 0.0 && sy_earlier > 0.0) {
            return None;
        }
        let (mut ss, mut g) = (0.0, 0usize);
        for b in 0..a.now.0.len() {
            let (x, y) = (a.now.0[b], a.now.1[b]);
            let (xe, ye) = (a.earlier.0[b], a.earlier.1[b]);
            if x == 0.0 && y == 0.0 && xe == 0.0 && ye == 0.0 {
                continue;
            }
            g += 1;
            let h =
                (x - a.centre_now * y) / sy_now - theta * (xe - a.centre_earlier * ye) / sy_earlier;
            ss += h * h;
        }
        if g < 2 {
            return None;
        }
        let gf = g as f64;
        variance += a.weight * a.weight * gf / (gf - 1.0) * ss;
    }
    if !(variance > 0.0 && variance.is_finite()) {
        return None;
    }
    let z = (delta_now - theta * delta_earlier) / variance.sqrt();
    Some(TestResult {
        statistic: z,
        p_value: normal_p(z, tail),
    })
}

/// [`ratio_test_null`]'s window test as an innovation given the band's earlier windows
/// (see [`innovation`]): `now` and `earlier` are [treatment, control] bucket totals.
/// Returns the test and θ.
pub fn ratio_innovation_test(
    now: [(&[f64], &[f64]); 2],
    earlier: [(&[f64], &[f64]); 2],
    margin: f64,
    tail: Tail,
) -> Option<(TestResult, f64)> {
    if !valid_margin(margin) {
        return None;
    }
    let r = 1.0 + margin;
    let sums = |(x, y): (&[f64], &[f64])| (x.iter().sum::<f64>(), y.iter().sum::<f64>());
    // The null centres and the effect of one period, as in `ratio_test_null`.
    let period = |[t, c]: [(&[f64], &[f64]); 2]| {
        let ((sxt, syt), (sxc, syc)) = (sums(t), sums(c));
        let rc0 = (sxt + sxc) / (r * syt + syc);
        (r * rc0, rc0, sxt / syt - r * sxc / syc)
    };
    let (t_now, c_now, delta_now) = period(now);
    let (t_earlier, c_earlier, delta_earlier) = period(earlier);
    // θ from control where it has spread, else from the treatment, else 0.
    let theta = persistence(now[1], earlier[1])
        .or_else(|| persistence(now[0], earlier[0]))
        .unwrap_or(0.0);
    let arms = [
        InnovationArm {
            now: now[0],
            earlier: earlier[0],
            weight: 1.0,
            centre_now: t_now,
            centre_earlier: t_earlier,
        },
        InnovationArm {
            now: now[1],
            earlier: earlier[1],
            weight: r,
            centre_now: c_now,
            centre_earlier: c_earlier,
        },
    ];
    innovation(&arms, theta, delta_now, delta_earlier, tail).map(|t| (t, theta))
}

/// One-sided z-test of an estimate against a fixed bound (absolute guardrails):
/// H1 value > bound (`Greater`) or value < bound (`Less`), z = (value − bound)/se.
pub fn bound_test(value: f64, se: f64, bound: f64, tail: Tail) -> Option<TestResult> {
    if !(se > 0.0 && se.is_finite() && value.is_finite() && bound.is_finite()) {
        return None;
    }
    let z = (value - bound) / se;
    Some(TestResult {
        statistic: z,
        p_value: normal_p(z, tail),
    })
}

/// Two-sample z-test of quantile estimates with their standard errors and a margin:
/// z = (q_T − r·q_C)/sqrt(se_T² + r²·se_C²), r = 1 + margin.
pub fn quantile_test(
    (qt, se_t): (f64, f64),
    (qc, se_c): (f64, f64),
    margin: f64,
    tail: Tail,
) -> Option<TestResult> {
    if !valid_margin(margin) {
        return None;
    }
    let r = 1.0 + margin;
    let var = se_t * se_t + r * r * se_c * se_c;
    if !(var > 0.0 && var.is_finite()) {
        return None;
    }
    let z = (qt - r * qc) / var.sqrt();
    Some(TestResult {
        statistic: z,
        p_value: normal_p(z, tail),
    })
}

/// Design effect of an indicator from per-bucket counts: the clustered variance of
/// F = Σbelow/Σtotal ([`ratio_estimate`]) over the binomial F(1−F)/n. `None` where F
/// is 0 or 1 or the variance is undefined.
pub fn indicator_deff(below: &[f64], total: &[f64]) -> Option<f64> {
    let e = ratio_estimate(below, total)?;
    let f = e.ratio;
    if !(f > 0.0 && f < 1.0) {
        return None;
    }
    Some(e.variance / (f * (1.0 - f) / e.denominator))
}

/// Units of prior weight in the sample-ratio e-process's running estimate.
pub const SRM_PRIOR_UNITS: f64 = 10.0;

/// One unit's factor (in log) of the sample-ratio e-process, an anytime-valid test of
/// H0: every unit is in treatment with a probability in [lo, hi] (lo = hi: the split
/// in effect; lo < hi while an ADVANCE awaits the platform). Predictable plug-in
/// likelihood ratio: with q the running share of the units before this one (shrunk
/// toward the middle of the interval by [`SRM_PRIOR_UNITS`]) and m = q clamped into
/// [lo, hi], the factor is q/m for a treatment unit and (1−q)/(1−m) for a control one.
/// For any true probability p in [lo, hi] its expectation p·q/m + (1−p)(1−q)/(1−m) is
/// at most 1 (linear in p, 1 at p = m, and q lies on the far side of m), so the
/// running product is a nonnegative supermartingale and P(ever ≥ 1/α) ≤ α (Ville).
pub fn srm_log_factor(n_t: u64, n_c: u64, treated: bool, lo: f64, hi: f64) -> f64 {
    let mid = (lo + hi) / 2.0;
    let q = ((n_t as f64 + SRM_PRIOR_UNITS * mid) / ((n_t + n_c) as f64 + SRM_PRIOR_UNITS))
        .clamp(1e-6, 1.0 - 1e-6);
    let m = q.clamp(lo, hi);
    if treated {
        (q / m).ln()
    } else {
        ((1.0 - q) / (1.0 - m)).ln()
    }
}

/// Two-sided mixture-SPRT always-valid p-value (Johari et al. 2017, "Always valid
/// inference"; the normal-mixture form used by Optimizely).
///
/// For an effect estimate δ̂ with (known/plug-in) variance v and mixing distribution
/// δ − δ₀ ~ N(0, τ²), the mixture likelihood ratio against H0: δ = δ₀ is
/// Λ = sqrt(v/(v+τ²)) · exp(τ²(δ̂−δ₀)² / (2v(v+τ²))), and p = min(1, 1/Λ), computed in
/// log space. This is the p-value for one look; the always-valid p-value sequence is
/// its running minimum over looks, p_n = min(p_{n−1}, msprt_p_value(...)), which the
/// caller keeps. τ² sets where the test has most power (≈ the squared effect size of
/// interest). Invalid input (non-finite, v ≤ 0, τ² < 0) yields 1.0 (no evidence).
pub fn msprt_p_value(delta_hat: f64, delta0: f64, variance: f64, tau2: f64) -> f64 {
    match msprt_log_lambda(delta_hat, delta0, variance, tau2) {
        Some(l) => (-l).exp().min(1.0),
        None => 1.0,
    }
}

/// One-sided mixture-SPRT always-valid p-value.
///
/// Uses a half-normal mixture on the alternative side only (density 2·N(0, τ²) on
/// δ − δ₀ > 0 for `Tail::Greater`, on δ − δ₀ < 0 for `Tail::Less`), which integrates to
/// Λ₁ = 2·Λ·Φ(s·(δ̂−δ₀)·τ / sqrt(v(v+τ²))), s = ±1 the tail sign and Λ the two-sided
/// statistic of [`msprt_p_value`]; p = min(1, 1/Λ₁). Λ₁ is a nonnegative martingale at
/// δ = δ₀ and a supermartingale for δ on the null side, so (with the running minimum over
/// looks) it is always valid for H0: δ ≤ δ₀ (resp. ≥). When the estimate lies on the null
/// side Λ₁ ≤ sqrt(v/(v+τ²)) < 1, so p = 1 exactly; far on the alternative side p ≈ half
/// the two-sided p-value. Invalid input yields 1.0.
pub fn msprt_p_value_one_sided(
    delta_hat: f64,
    delta0: f64,
    variance: f64,
    tau2: f64,
    tail: Tail,
) -> f64 {
    match msprt_log_e_one_sided(delta_hat, delta0, variance, tau2, tail) {
        Some(log_l1) => (-log_l1).exp().min(1.0),
        None => 1.0,
    }
}

/// ln Λ₁ of [`msprt_p_value_one_sided`]: the one-sided mixture likelihood ratio as an
/// e-value. `None` when the estimate is on the null side or the input is invalid; Λ₁ is
/// then below 1 and 0 is a valid (conservative) stand-in.
pub fn msprt_log_e_one_sided(
    delta_hat: f64,
    delta0: f64,
    variance: f64,
    tau2: f64,
    tail: Tail,
) -> Option<f64> {
    let log_lambda = msprt_log_lambda(delta_hat, delta0, variance, tau2)?;
    let sign = if tail == Tail::Greater { 1.0 } else { -1.0 };
    let d = sign * (delta_hat - delta0);
    if d <= 0.0 || d.is_nan() || tau2 == 0.0 {
        return None;
    }
    let arg = d / variance.sqrt() * (tau2 / (variance + tau2)).sqrt();
    Some(std::f64::consts::LN_2 + log_lambda + Normal::standard().cdf(arg).ln())
}

/// Per-window drifts (in standard-normal units) the change-point detector mixes over.
/// Small persistent drifts are left to the band's mSPRT; tuned with
/// `benches/decision_quality.rs` (0.5 added nothing to detection within 6 windows).
pub const DETECTOR_DRIFTS: [f64; 3] = [1.0, 2.0, 3.0];

/// The drifts' weights in the mixture (they sum to 1). Most on 2 sd, about a ×1.5
/// error regression at the benchmark's volume: measured on `benches/rollouts.rs`
/// (1,000 rollouts, each window's own test scored), with
/// [`crate::rules::judge::DETECTOR_WEIGHT`] then 3/4, paused within 6 windows 90.9%
/// against 87.4% at equal weights and 1/2; re-tried with innovations and
/// [`ChangePrior::BESIDE_BAND`], 0.3/0.6/0.1 and 0.45/0.45/0.1 gave the same 92.0–92.1%. Any fixed weights keep the
/// mixture a supermartingale, and a state saved under other weights stays valid (the
/// weights enter only [`Detector::log_e`]).
pub const DETECTOR_DRIFT_WEIGHTS: [f64; DETECTOR_DRIFTS.len()] = [0.2, 0.6, 0.2];

/// Equal drift weights: for a relative bound against a rolling baseline, whose windows'
/// p-values are dependent (consecutive windows share most of their baseline), so the
/// detector's guarantee is approximate there. With [`DETECTOR_DRIFT_WEIGHTS`] a
/// stationary cohort with 30% window-to-window rate noise was stopped in 1 of 20 runs
/// over 200 windows, against none with these (`rules::baseline_tests`).
pub const DETECTOR_EQUAL_WEIGHTS: [f64; DETECTOR_DRIFTS.len()] =
    [1.0 / DETECTOR_DRIFTS.len() as f64; DETECTOR_DRIFTS.len()];

/// The change-point prior of a [`Detector`]: change point k ≥ 1 (the regression's first
/// window) gets w_k = (a+1)/((k+a)(k+a+1)), which sums to 1 (it telescopes), and the
/// change points still in the future keep Σ_{k>n} w_k = (a+1)/(n+a+1). The offset a
/// only moves mass between change points: any fixed prior keeps the detector valid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChangePrior {
    offset: f64,
}

impl ChangePrior {
    /// a = 0, w_k = 1/(k(k+1)): half the mass on the band's first window. For a detector
    /// that is its bound's only evidence (absolute bounds, a rolling baseline,
    /// quantiles), where a breach present from the band's start is carried by it alone.
    pub const FROM_START: ChangePrior = ChangePrior { offset: 0.0 };

    /// a = 3: a fifth of the mass on the first window, half within the band's first
    /// hour, then a tail ∝ 1/k². Beside a band mSPRT, which already carries a regression
    /// present from the band's start, so the detector's mass goes to later starts.
    /// Measured on `benches/rollouts.rs` (1,000 rollouts each, with
    /// [`crate::rules::judge::DETECTOR_WEIGHT`] 0.9 against [`ChangePrior::FROM_START`] and
    /// 3/4): ×1.5 errors from window 4 paused within 6 windows 89.0% → 92.0%, ×3 errors
    /// in mobile-web's small cohorts 66.1% → 72.3%, ×1.5 errors from the band's first
    /// window 96.3% → 94.8%. (a = 8: 89.8% on the first row, a = 3 alone 91.3%.)
    pub const BESIDE_BAND: ChangePrior = ChangePrior { offset: 3.0 };

    /// The offset a.
    pub fn offset(self) -> f64 {
        self.offset
    }

    /// ln w_k.
    fn log_weight(self, k: f64) -> f64 {
        let a = self.offset;
        (a + 1.0).ln() - ((k + a) * (k + a + 1.0)).ln()
    }

    /// ln Σ_{k>n} w_k.
    fn log_tail(self, n: f64) -> f64 {
        let a = self.offset;
        (a + 1.0).ln() - (n + a + 1.0).ln()
    }
}

/// A change-point e-detector (Shin, Ramdas & Rinaldo, "E-detectors", 2023) for a
/// regression that may begin at any window of a ramp band.
///
/// Each window contributes a one-sided score z (the standard-normal quantile of a
/// p-value: N(0, 1) at the null boundary, stochastically smaller inside the null): the
/// window's own test; for a relative bound against control on a rate or mean, after the
/// band's first window, the window's innovation given the band's earlier windows
/// ([`ratio_innovation_test`]), since units keep their arm and the windows' own tests
/// are correlated. For a drift θ the likelihood ratio of windows k..n is
/// L_{k,n}(θ) = Π_{j=k..n} exp(θ·z_j − θ²/2), a nonnegative martingale under the null
/// with mean 1. Change point k gets the prior weight w_k of a [`ChangePrior`], which
/// sums to 1; a change point still in the future contributes its weight unchanged. So
/// M_n = Σ_θ π_θ·Σ_{k≤n} w_k·L_{k,n}(θ) + Σ_{k>n} w_k,
///     with S_n = Σ_{k≤n} w_k·L_{k,n} = (S_{n−1} + w_n)·ℓ_n
/// (π = [`DETECTOR_DRIFT_WEIGHTS`])
/// is a nonnegative supermartingale with M_0 = 1, and by Ville's inequality
/// P(M_n ≥ 1/α for some n) ≤ α: judging it every window keeps the error rate whenever
/// the regression starts. S is kept in log space. A detector is updated and read with
/// one prior for its whole band (its role fixes it).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Detector {
    /// Windows scored so far in this band.
    pub windows: u32,
    /// ln S_n(θ) per [`DETECTOR_DRIFTS`]; empty before the first window.
    pub log_s: Vec<f64>,
}

impl Detector {
    /// Adds one window, scored by its one-sided p-value in the direction of harm.
    pub fn update(&mut self, p_value: f64, prior: ChangePrior) {
        // z = Φ⁻¹(1 − p), computed as −Φ⁻¹(p) so that tiny p keep their precision.
        let p = p_value.clamp(1e-300, 1.0);
        let z = (-Normal::standard().inverse_cdf(p)).clamp(-10.0, 40.0);
        self.windows += 1;
        let log_w = prior.log_weight(f64::from(self.windows));
        if self.log_s.is_empty() {
            self.log_s = vec![f64::NEG_INFINITY; DETECTOR_DRIFTS.len()];
        }
        for (ls, theta) in self.log_s.iter_mut().zip(DETECTOR_DRIFTS) {
            *ls = log_add_exp(*ls, log_w) + theta * z - theta * theta / 2.0;
        }
    }

    /// ln M_n (0 before the first window: M_0 = 1), drifts weighted by
    /// [`DETECTOR_DRIFT_WEIGHTS`].
    pub fn log_e(&self, prior: ChangePrior) -> f64 {
        self.log_e_weighted(&DETECTOR_DRIFT_WEIGHTS, prior)
    }

    /// ln M_n with drift weights `weights` (summing to 1, one per [`DETECTOR_DRIFTS`]).
    pub fn log_e_weighted(
        &self,
        weights: &[f64; DETECTOR_DRIFTS.len()],
        prior: ChangePrior,
    ) -> f64 {
        let tail = prior.log_tail(f64::from(self.windows));
        self.log_s
            .iter()
            .zip(weights)
            .map(|(ls, w)| ls + w.ln())
            .fold(tail, log_add_exp)
    }

    /// `[windows, ln S(θ)...]` for the evaluation record; empty before the first window.
    pub fn values(&self) -> Vec<f64> {
        if self.windows == 0 {
            return Vec::new();
        }
        std::iter::once(f64::from(self.windows))
            .chain(self.log_s.iter().copied())
            .collect()
    }

    /// The inverse of [`Detector::values`]; `None` if the shape does not fit.
    pub fn from_values(v: &[f64]) -> Option<Detector> {
        match v {
            [] => Some(Detector::default()),
            [n, rest @ ..] if rest.len() == DETECTOR_DRIFTS.len() && *n >= 1.0 => Some(Detector {
                windows: *n as u32,
                log_s: rest.to_vec(),
            }),
            _ => None,
        }
    }
}

/// ln(eᵃ + eᵇ) without overflow.
pub fn log_add_exp(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    hi + (lo - hi).exp().ln_1p()
}

#[cfg(test)]
mod tests {
    const VECTORS: &str = include_str!("../../tests/data/stats_vectors.json");

    use super::*;
    use serde_json::Value;

    /// The detector's ln M_n, window by window, against `scripts/detector_vectors.py`: every
    /// change point summed separately (no recursion), the future change points' mass
    /// as 1 minus the past's, z from scipy's `norm.isf`; both priors, both weightings.
    #[test]
    fn detector_matches_the_direct_sum_for_both_weightings() {
        let all: Value =
            serde_json::from_str(include_str!("../../tests/data/detector_vectors.json")).unwrap();
        let drifts: Vec<f64> = serde_json::from_value(all["drifts"].clone()).unwrap();
        assert_eq!(drifts, DETECTOR_DRIFTS);
        let cases = all["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 16);
        for case in cases {
            let prior = match case["prior_offset"].as_f64().unwrap() {
                0.0 => ChangePrior::FROM_START,
                3.0 => ChangePrior::BESIDE_BAND,
                a => panic!("no prior with offset {a}"),
            };
            assert_eq!(prior.offset(), case["prior_offset"].as_f64().unwrap());
            let p: Vec<f64> = serde_json::from_value(case["p"].clone()).unwrap();
            let w: Vec<f64> = serde_json::from_value(case["weights"].clone()).unwrap();
            let want: Vec<f64> = serde_json::from_value(case["log_m"].clone()).unwrap();
            let weights: [f64; DETECTOR_DRIFTS.len()] = w.try_into().unwrap();
            let mut d = Detector::default();
            for (pv, want) in p.iter().zip(&want) {
                d.update(*pv, prior);
                let got = d.log_e_weighted(&weights, prior);
                assert!(
                    (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                    "{}: {got} vs {want}",
                    case["name"]
                );
            }
        }
        // Both weightings are a probability over the drifts (sum 1: M stays a
        // supermartingale with M_0 = 1).
        for w in [DETECTOR_DRIFT_WEIGHTS, DETECTOR_EQUAL_WEIGHTS] {
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{w:?}");
            assert!(w.iter().all(|x| *x > 0.0), "{w:?}");
        }
        assert_eq!(Detector::default().log_e(ChangePrior::FROM_START), 0.0);
        assert_eq!(Detector::default().log_e(ChangePrior::BESIDE_BAND), 0.0);
    }

    /// Relative tolerance against scipy/statsmodels/mpmath. An exact 0 reference (e.g. a
    /// perfectly balanced SRM statistic) is compared with an absolute 1e-12 instead.
    const RTOL: f64 = 1e-9;

    fn vectors(section: &str) -> Vec<Value> {
        let all: Value = serde_json::from_str(VECTORS).expect("vector file is valid JSON");
        let cases = all[section].as_array().expect("section exists").clone();
        assert!(!cases.is_empty(), "no cases in {section}");
        cases
    }

    fn f(v: &Value, key: &str) -> f64 {
        v[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} is a number in {v}"))
    }

    fn u(v: &Value, key: &str) -> u64 {
        v[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} is an integer in {v}"))
    }

    fn tail(v: &Value) -> Tail {
        match v["tail"].as_str() {
            Some("greater") => Tail::Greater,
            Some("less") => Tail::Less,
            other => panic!("bad tail {other:?}"),
        }
    }

    fn assert_close(got: f64, want: f64, what: &str, case: &Value) {
        let ok = if want == 0.0 {
            got.abs() <= 1e-12
        } else {
            (got - want).abs() <= RTOL * want.abs()
        };
        assert!(
            ok,
            "{what}: got {got:e}, want {want:e} (rel err {:e}) in {case}",
            (got / want - 1.0).abs()
        );
    }

    fn check(got: Option<TestResult>, case: &Value) {
        let want = &case["expected"];
        match (got, want.is_null()) {
            (None, true) => {}
            (Some(r), false) => {
                assert_close(r.statistic, f(want, "statistic"), "statistic", case);
                assert_close(r.p_value, f(want, "p_value"), "p_value", case);
            }
            (got, _) => panic!("got {got:?}, want {want} in {case}"),
        }
    }

    #[test]
    fn two_proportion_matches_statsmodels_score_ratio() {
        for c in vectors("two_proportion") {
            let got = two_proportion(
                u(&c, "x_t"),
                u(&c, "n_t"),
                u(&c, "x_c"),
                u(&c, "n_c"),
                f(&c, "margin"),
                tail(&c),
            );
            check(got, &c);
        }
    }

    #[test]
    fn welch_t_matches_scipy_ttest_ind() {
        for c in vectors("welch_t") {
            let got = welch_t(
                u(&c, "n_t"),
                f(&c, "sum_t"),
                f(&c, "sumsq_t"),
                u(&c, "n_c"),
                f(&c, "sum_c"),
                f(&c, "sumsq_c"),
                f(&c, "margin"),
                tail(&c),
            );
            check(got, &c);
        }
    }

    #[test]
    fn mann_whitney_matches_scipy() {
        for c in vectors("mann_whitney_binned") {
            let bins: Vec<(f64, u64, u64)> = c["bins"]
                .as_array()
                .expect("bins array")
                .iter()
                .map(|b| {
                    (
                        b[0].as_f64().expect("value"),
                        b[1].as_u64().expect("t"),
                        b[2].as_u64().expect("c"),
                    )
                })
                .collect();
            check(mann_whitney_binned(&bins, tail(&c)), &c);
        }
    }

    #[test]
    fn srm_matches_scipy_chisquare() {
        for c in vectors("srm_chi_square") {
            check(
                srm_chi_square(u(&c, "n_t"), u(&c, "n_c"), f(&c, "expected_t_share")),
                &c,
            );
        }
    }

    #[test]
    fn bh_matches_statsmodels_multipletests() {
        for c in vectors("benjamini_hochberg") {
            let p: Vec<f64> = c["p_values"]
                .as_array()
                .expect("p")
                .iter()
                .map(|v| v.as_f64().expect("p"))
                .collect();
            let want_rej: Vec<bool> = c["rejected"]
                .as_array()
                .expect("rej")
                .iter()
                .map(|v| v.as_bool().expect("bool"))
                .collect();
            assert_eq!(benjamini_hochberg(&p, f(&c, "q")), want_rej, "{c}");
            let adj = bh_adjusted(&p);
            let want_adj = c["adjusted"].as_array().expect("adj");
            assert_eq!(adj.len(), want_adj.len());
            for (g, w) in adj.iter().zip(want_adj) {
                assert_close(*g, w.as_f64().expect("adj"), "adjusted", &c);
            }
        }
    }

    #[test]
    fn msprt_matches_mpmath() {
        for c in vectors("msprt") {
            let (d, d0, v, t2) = (
                f(&c, "delta_hat"),
                f(&c, "delta0"),
                f(&c, "variance"),
                f(&c, "tau2"),
            );
            assert_close(
                msprt_p_value(d, d0, v, t2),
                f(&c, "two_sided"),
                "two-sided",
                &c,
            );
            assert_close(
                msprt_p_value_one_sided(d, d0, v, t2, Tail::Greater),
                f(&c, "greater"),
                "greater",
                &c,
            );
            assert_close(
                msprt_p_value_one_sided(d, d0, v, t2, Tail::Less),
                f(&c, "less"),
                "less",
                &c,
            );
        }
    }

    #[test]
    fn student_t_sf_matches_scipy() {
        for c in vectors("student_t_sf") {
            assert_close(student_t_sf(f(&c, "t"), f(&c, "df")), f(&c, "sf"), "sf", &c);
        }
    }

    #[test]
    fn degenerate_inputs_give_none() {
        let nan = f64::NAN;
        assert_eq!(two_proportion(0, 0, 5, 10, 0.0, Tail::Greater), None);
        assert_eq!(two_proportion(5, 10, 0, 0, 0.1, Tail::Less), None);
        assert_eq!(two_proportion(11, 10, 5, 10, 0.0, Tail::Less), None);
        assert_eq!(two_proportion(0, 10, 0, 10, 0.1, Tail::Greater), None);
        assert_eq!(two_proportion(10, 10, 10, 10, 0.0, Tail::Greater), None);
        assert_eq!(two_proportion(3, 10, 5, 10, nan, Tail::Greater), None);
        assert_eq!(two_proportion(3, 10, 5, 10, -1.0, Tail::Greater), None);
        assert_eq!(welch_t(1, 1.0, 1.0, 5, 5.0, 7.0, 0.0, Tail::Greater), None);
        assert_eq!(welch_t(0, 0.0, 0.0, 0, 0.0, 0.0, 0.0, Tail::Less), None);
        assert_eq!(welch_t(5, nan, 7.0, 5, 5.0, 7.0, 0.0, Tail::Greater), None);
        assert_eq!(
            welch_t(5, 5.0, 7.0, 5, 5.0, f64::INFINITY, 0.0, Tail::Greater),
            None
        );
        assert_eq!(welch_t(3, 3.0, 3.0, 3, 6.0, 12.0, 0.1, Tail::Greater), None);
        assert_eq!(mann_whitney_binned(&[], Tail::Greater), None);
        assert_eq!(mann_whitney_binned(&[(1.0, 0, 0)], Tail::Greater), None);
        assert_eq!(
            mann_whitney_binned(&[(1.0, 3, 0), (2.0, 4, 0)], Tail::Greater),
            None
        );
        assert_eq!(
            mann_whitney_binned(&[(nan, 3, 1), (2.0, 4, 1)], Tail::Less),
            None
        );
        assert_eq!(
            mann_whitney_binned(&[(2.0, 3, 1), (1.0, 4, 1)], Tail::Less),
            None
        );
        assert_eq!(
            mann_whitney_binned(&[(1.0, 3, 1), (1.0, 4, 1)], Tail::Less),
            None
        );
        assert_eq!(srm_chi_square(0, 0, 0.5), None);
        for s in [0.0, 1.0, nan, -0.5, 2.0] {
            assert_eq!(srm_chi_square(10, 10, s), None);
        }
        assert!(student_t_sf(nan, 3.0).is_nan() && student_t_sf(1.0, 0.0).is_nan());
    }

    #[test]
    fn extreme_but_valid_inputs_do_not_panic() {
        let big = u64::MAX;
        let r = two_proportion(big / 2, big, big / 3, big, 0.1, Tail::Greater).expect("defined");
        assert!(r.p_value.is_finite());
        assert!(two_proportion(0, 10, 10, 10, 0.1, Tail::Less).is_some());
        // u128 overflow of 2·U₁ is reported as None, not a panic.
        let r = mann_whitney_binned(&[(0.0, 0, big), (1.0, big, big), (2.0, big, 0)], Tail::Less);
        assert_eq!(r, None);
        let m = u64::from(u32::MAX);
        let r = mann_whitney_binned(
            &[(0.0, m, 0), (1.0, 0, m), (f64::INFINITY, m, m)],
            Tail::Less,
        );
        assert!(r.is_some_and(|r| r.p_value.is_finite()));
        let r = welch_t(2, 1e300, 1e300, 2, -1e300, 1e300, 0.0, Tail::Greater);
        assert!(r.is_none_or(|r| (0.0..=1.0).contains(&r.p_value)));
        assert_eq!(srm_chi_square(big, 0, 0.5).map(|r| r.p_value), Some(0.0));
        assert_eq!(student_t_sf(1e300, 7.0), 0.0);
        assert_eq!(student_t_sf(-1e300, 1e7), 1.0);
        assert_eq!(student_t_sf(0.0, 3.0), 0.5);
        assert_eq!(student_t_sf(2.0, f64::INFINITY), Normal::standard().sf(2.0));
    }

    #[test]
    fn welch_margin_equals_scaled_control() {
        // (x_t; k·x_c) with k = 1.1: Σ(kx) = kΣx, Σ(kx)² = k²Σx².
        let (k, n, s, q) = (1.1f64, 20, 50.0, 160.0);
        let a = welch_t(10, 30.0, 100.0, n, s, q, 0.1, Tail::Less).expect("defined");
        let b = welch_t(10, 30.0, 100.0, n, k * s, k * k * q, 0.0, Tail::Less).expect("defined");
        assert!((a.statistic - b.statistic).abs() < 1e-12 && (a.p_value - b.p_value).abs() < 1e-12);
    }

    #[test]
    fn bh_edge_cases() {
        assert!(benjamini_hochberg(&[], 0.05).is_empty());
        assert!(bh_adjusted(&[]).is_empty());
        assert_eq!(
            benjamini_hochberg(&[f64::NAN, 0.001], 0.05),
            vec![false, true]
        );
        assert_eq!(bh_adjusted(&[f64::NAN, 0.001]), vec![1.0, 0.002]);
        assert_eq!(
            benjamini_hochberg(&[0.01, 0.02], f64::NAN),
            vec![false, false]
        );
    }

    #[test]
    fn msprt_edge_cases() {
        let nan = f64::NAN;
        for (d, d0, v, t2) in [
            (nan, 0.0, 1.0, 1.0),
            (0.1, 0.0, 0.0, 1.0),
            (0.1, 0.0, -1.0, 1.0),
            (0.1, 0.0, 1.0, -1.0),
            (0.1, 0.0, 1.0, nan),
            (1.0, 0.0, 1.0, 0.0),
        ] {
            assert_eq!(msprt_p_value(d, d0, v, t2), 1.0);
            assert_eq!(msprt_p_value_one_sided(d, d0, v, t2, Tail::Greater), 1.0);
        }
        // Wrong side of the one-sided test: exactly 1.
        assert_eq!(
            msprt_p_value_one_sided(-5.0, 0.0, 1e-4, 1e-2, Tail::Greater),
            1.0
        );
        assert_eq!(
            msprt_p_value_one_sided(5.0, 0.0, 1e-4, 1e-2, Tail::Less),
            1.0
        );
        // Huge evidence underflows to 0 instead of overflowing.
        assert_eq!(msprt_p_value(1e200, 0.0, 1e-300, 1.0), 0.0);
        assert_eq!(
            msprt_p_value_one_sided(1e200, 0.0, 1e-300, 1.0, Tail::Greater),
            0.0
        );
    }
}
