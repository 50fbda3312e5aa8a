#!/usr/bin/env python3
"""Generate tests/data/unit_vectors.json: reference values for the per-unit statistics.

Run (from the crate root; numpy and scipy only, everything is seeded, so the output is
byte-for-byte reproducible with the versions recorded in its "generator" field):

    pip install numpy scipy
    python3 scripts/unit_vectors.py

This is an INDEPENDENT implementation written from the written definitions, not from the
Rust code. It computes, and stores with the raw inputs:

  hash      unit_hash(s) = fmix64(fnv1a64(utf-8 bytes of s)); bucket64 = h & 63,
            bucket32 = h & 31, key (the SRM sample key) = h >> 2.
  ratio     ratio metrics (rates and means) over events (unit, x, y): R = X/Y per arm,
            the bucketed (64 hash buckets) delta-method variance
                V = G/(G-1) * sum_b (x_b - R y_b)^2 / Y^2,   G = buckets with x_b or y_b != 0,
            the textbook unit-level variance V_unit = n/(n-1) * sum_u (x_u - R y_u)^2 / Y^2,
            the two-sample z test of R_T vs (1+m) R_C with both, and the naive i.i.d.
            variance (rate: R(1-R)/Y when R <= 1, else null; mean: sample variance / n).
  quantile  the Woodruff interval of an "inverted_cdf" empirical quantile whose
            indicator variance is clustered by unit (design effect deff = max(1, V_clu/V_iid)),
            the two-sample z test of q_T vs (1+m) q_C, and the i.i.d. version (deff = 1).
  srm       the sequential unit-level sample-ratio e-process over windows of sightings:
            bottom-K hash sample with a shrinking threshold tau, each sampled unit tested
            once, plug-in (prior weight a) likelihood ratio against the interval null
            [lo, hi]; the state after every window.

Float conventions: all arithmetic in IEEE doubles; sums use math.fsum (correctly rounded),
so a Rust implementation summing in another order agrees to ~1e-12 relative, not bit-for-bit
(the SRM log_e is a sequential sum in key order and should agree to ~1e-12 absolute).
Raw values (means, latencies) are rounded to 3 decimals BEFORE any statistic is computed,
so the stored inputs reproduce the stored outputs exactly.

It also prints sanity checks (bucketed vs unit-level variance, clustered vs i.i.d.
variance, quantile design effects, SRM crossing of ln(1/alpha)).
"""
import json
import math
import platform
import sys
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

import numpy as np
import scipy
from scipy.stats import norm

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "unit_vectors.json"
M64 = (1 << 64) - 1
KEY_MAX = (1 << 62) - 1
PENDING_SEED = 310


# ------------------------------------------------------------------ A. unit hash
def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & M64
    return h


def fmix64(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & M64
    k ^= k >> 33
    return k


def unit_hash(s: str) -> int:
    return fmix64(fnv1a64(s.encode("utf-8")))


def bucket64(s):
    return unit_hash(s) & 63


def bucket32(s):
    return unit_hash(s) & 31


def srm_key(s):
    return unit_hash(s) >> 2


# known answers for the two halves (FNV-1a 64 published test values; fmix64(0) == 0)
assert fnv1a64(b"") == 0xCBF29CE484222325
assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
assert fnv1a64(b"foobar") == 0x85944171F73967E8
assert fmix64(0) == 0


def hash_section():
    units = [
        "", "a", "b", "A", "0", " ", "ü-π-😀", "😀", "日本語ユーザー", "naïve café",
        "user-1", "user-2", "user_0000000001", "12345678901234567890",
        "550e8400-e29b-41d4-a716-446655440000",
        "f47ac10b-58cc-4372-a567-0e02b2c3d479",
        "123e4567-e89b-12d3-a456-426614174000",
        "00000000-0000-0000-0000-000000000000",
        "x" * 200,
        ("abcdefghij0123456789" * 10),          # 200 chars
        ("ü" * 100),                            # 100 chars, 200 bytes
        "tab\tnewline\nquote\"backslash\\",
        "\u0000nul-inside",
        "trailing-space ",
    ]
    assert len(units[18]) == 200 and len(units[19]) == 200
    out = []
    for u in units:
        h = unit_hash(u)
        out.append({"unit": u, "hash": "0x%016x" % h, "bucket64": h & 63,
                    "bucket32": h & 31, "key": "0x%016x" % (h >> 2)})
    return out


# ------------------------------------------------------------------ helpers
def r3(v):
    return float(round(float(v), 3))


def pval(z, tail):
    return float(norm.sf(z)) if tail == "greater" else float(norm.cdf(z))


def b36(n):
    d = "0123456789abcdefghijklmnopqrstuvwxyz"
    s = ""
    while True:
        n, r = divmod(n, 36)
        s = d[r] + s
        if n == 0:
            return s


def unit_ids(prefix, n):
    return [prefix + b36(i) for i in range(n)]


# ------------------------------------------------------------------ B. ratio metrics
def ratio_arm(events):
    """events: list of (unit, x, y). Returns dict with R, V (bucketed), V_unit, G, n, iid parts."""
    xb, yb = defaultdict(list), defaultdict(list)
    xu, yu = defaultdict(list), defaultdict(list)
    for u, x, y in events:
        b = bucket64(u)
        xb[b].append(x)
        yb[b].append(y)
        xu[u].append(x)
        yu[u].append(y)
    bx = {b: math.fsum(xb[b]) for b in xb}
    by = {b: math.fsum(yb[b]) for b in yb}
    X = math.fsum(bx.values())
    Y = math.fsum(by.values())
    R = X / Y
    G = sum(1 for b in bx if bx[b] != 0 or by[b] != 0)
    V = G / (G - 1) * math.fsum((bx[b] - R * by[b]) ** 2 for b in bx) / (Y * Y)
    ux = {u: math.fsum(v) for u, v in xu.items()}
    uy = {u: math.fsum(v) for u, v in yu.items()}
    n = len(ux)
    Vu = n / (n - 1) * math.fsum((ux[u] - R * uy[u]) ** 2 for u in ux) / (Y * Y)
    # cross-check with a vectorised numpy computation (np.bincount over bucket ids)
    b = np.array([bucket64(u) for u, _, _ in events])
    xs = np.array([x for _, x, _ in events], dtype=float)
    ys = np.array([y for _, _, y in events], dtype=float)
    nx, ny = np.bincount(b, xs, 64), np.bincount(b, ys, 64)
    R2 = nx.sum() / ny.sum()
    G2 = int(np.count_nonzero((nx != 0) | (ny != 0)))
    V2 = G2 / (G2 - 1) * np.sum((nx - R2 * ny) ** 2) / ny.sum() ** 2
    assert G2 == G and math.isclose(R2, R, rel_tol=1e-12) and math.isclose(V2, V, rel_tol=1e-9)
    return dict(R=R, V=V, Vu=Vu, G=G, n=n, X=X, Y=Y, ux=ux, uy=uy, bx=bx, by=by)


def null_var(arm, center):
    """The bucketed variance of an arm's ratio, centred on the null-constrained ratio
    `center` instead of the arm's own (the score-test form: defined even when the arm
    has no numerator events at all)."""
    bx, by, G, Y = arm["bx"], arm["by"], arm["G"], arm["Y"]
    return G / (G - 1) * math.fsum((bx[b] - center * by[b]) ** 2 for b in bx) / (Y * Y)


def iid_var(kind, arm, events):
    if kind == "rate":
        R = arm["R"]
        return R * (1 - R) / arm["Y"] if R <= 1 else None
    xs = [x for _, x, _ in events]
    n = len(xs)
    mean = math.fsum(xs) / n
    return math.fsum((x - mean) ** 2 for x in xs) / (n - 1) / n


def ratio_vector(name, kind, margin, tail, treatment, control, note):
    t, c = ratio_arm(treatment), ratio_arm(control)
    r = 1.0 + margin
    delta = t["R"] - r * c["R"]
    zb = delta / math.sqrt(t["V"] + r * r * c["V"])
    zu = delta / math.sqrt(t["Vu"] + r * r * c["Vu"])
    # Null-constrained centres (Poisson MLE under H0: R_T = r R_C), as the engine tests.
    rc0 = (t["X"] + c["X"]) / (r * t["Y"] + c["Y"])
    v0t, v0c = null_var(t, r * rc0), null_var(c, rc0)
    z0 = delta / math.sqrt(v0t + r * r * v0c)
    vec = {
        "name": name, "kind": kind, "margin": margin, "tail": tail, "note": note,
        "treatment": [[u, x, y] for u, x, y in treatment],
        "control": [[u, x, y] for u, x, y in control],
        "bucketed": {"r_t": t["R"], "v_t": t["V"], "r_c": c["R"], "v_c": c["V"],
                     "z": zb, "p": pval(zb, tail), "g_t": t["G"], "g_c": c["G"]},
        "bucketed_null": {"r_c0": rc0, "v_t": v0t, "v_c": v0c, "z": z0, "p": pval(z0, tail)},
        "unit_level": {"v_t": t["Vu"], "v_c": c["Vu"], "z": zu, "p": pval(zu, tail),
                       "n_t": t["n"], "n_c": c["n"]},
        "iid": {"v_t": iid_var(kind, t, treatment), "v_c": iid_var(kind, c, control)},
    }
    # --- sanity prints
    more = [k for k, arm in (("t", t), ("c", c))
            if kind == "rate" and any(arm["ux"][u] > arm["uy"][u] for u in arm["ux"])]
    print(f"[ratio] {name}: kind={kind} rows t/c={len(treatment)}/{len(control)} "
          f"units t/c={t['n']}/{c['n']} G t/c={t['G']}/{c['G']} R_t={t['R']:.5g} R_c={c['R']:.5g}")
    def q(a, b):
        return a / b if b else float("nan")
    print(f"        V/V_unit t={q(t['V'], t['Vu']):.3f} c={q(c['V'], c['Vu']):.3f}   "
          f"z bucketed={zb:.3f} unit={zu:.3f}  p bucketed={vec['bucketed']['p']:.4g}")
    it, ic = vec["iid"]["v_t"], vec["iid"]["v_c"]
    if it is not None and ic is not None:
        print(f"        V_unit/V_iid t={q(t['Vu'], it):.2f} c={q(c['Vu'], ic):.2f}  "
              f"V_bucketed/V_iid t={q(t['V'], it):.2f} c={q(c['V'], ic):.2f}")
    else:
        print(f"        iid undefined (R > 1): R_t={t['R']:.3f} R_c={c['R']:.3f}")
    if more:
        print(f"        arms with a unit whose x_u > y_u: {more}")
    return vec


def activity(rng, n, mean, shape):
    """Events per unit: 1 + Poisson(Gamma(shape, mean/shape)) -- many light, some heavy users."""
    lam = rng.gamma(shape, mean / shape, size=n)
    return 1 + rng.poisson(lam)


def checkout_events(rng, units, err_mult, mean_checkouts=3.0, shape=0.5, retry=0.7,
                    beta=(0.6, 25.0)):
    """Error rate = errors / checkouts. Every started checkout is (u, 0, 1); every error is
    (u, 1, 0). Per-unit error propensity ~ Beta; after an error the user retries (another
    checkout) with probability `retry`, up to 4 retries -> errors cluster within units."""
    n_chk = activity(rng, len(units), mean_checkouts, shape)
    prop = np.minimum(0.95, rng.beta(*beta, size=len(units)) * err_mult)
    ev = []
    for u, k, p in zip(units, n_chk, prop):
        for _ in range(int(k)):
            tries = 0
            while True:
                ev.append((u, 0, 1))
                if rng.random() >= p:
                    break
                ev.append((u, 1, 0))
                tries += 1
                if tries > 4 or rng.random() >= retry:
                    break
    return ev


def shuffled(rng, ev):
    idx = rng.permutation(len(ev))
    return [ev[i] for i in idx]


def ratio_section():
    out = []

    # 1. clustered error rate, A/A, non-inferiority (H1: R_T < 1.1 R_C)
    rng = np.random.default_rng(101)
    t = checkout_events(rng, unit_ids("ea", 700), 1.0)
    c = checkout_events(rng, unit_ids("eb", 700), 1.0)
    out.append(ratio_vector(
        "error_rate_aa_noninferiority", "rate", 0.1, "less", shuffled(rng, t), shuffled(rng, c),
        "A/A; per-event rows: checkout (0,1), error (1,0); gamma activity, beta propensity, "
        "retries after errors"))

    # 2. error-rate regression (treatment propensity x1.5), detection test margin 0
    rng = np.random.default_rng(102)
    t = checkout_events(rng, unit_ids("fa", 700), 1.5)
    c = checkout_events(rng, unit_ids("fb", 700), 1.0)
    out.append(ratio_vector(
        "error_rate_regression", "rate", 0.0, "greater", shuffled(rng, t), shuffled(rng, c),
        "treatment error propensity x1.5; per-event rows"))

    # 3. 5% treatment arm
    rng = np.random.default_rng(103)
    t = checkout_events(rng, unit_ids("ga", 110), 1.0)
    c = checkout_events(rng, unit_ids("gb", 2090), 1.0, mean_checkouts=1.2)
    out.append(ratio_vector(
        "error_rate_5pct_treatment", "rate", 0.05, "greater", shuffled(rng, t), shuffled(rng, c),
        "110 treatment vs 2090 control units (5%); per-event rows"))

    # 4. mean metric: lognormal latency (ms) with persistent per-user multipliers
    rng = np.random.default_rng(104)

    def latency_events(units, shift):
        n = activity(rng, len(units), 3.0, 0.5)
        mult = np.exp(rng.normal(0.0, 0.5, size=len(units)))
        slow = rng.random(len(units)) < 0.05
        mult[slow] *= 4.0
        ev = []
        for u, k, m in zip(units, n, mult):
            for v in np.exp(rng.normal(math.log(180.0), 0.6, size=int(k))) * m * shift:
                ev.append((u, r3(min(60000.0, max(1.0, v))), 1))
        return ev

    t = latency_events(unit_ids("la", 600), 1.04)
    c = latency_events(unit_ids("lb", 600), 1.0)
    out.append(ratio_vector(
        "latency_mean_ms", "mean", 0.05, "less", shuffled(rng, t), shuffled(rng, c),
        "mean page latency (ms, 3 decimals), x=value y=1; per-user lognormal multipliers, "
        "5% persistently slow users x4; treatment +4%"))

    # 5. mean metric: CSAT 1..5, few responses per user, user-level mood
    rng = np.random.default_rng(105)

    def csat_events(units, lift):
        n = activity(rng, len(units), 1.0, 0.7)
        mood = rng.normal(0.0, 1.0, size=len(units)) + lift
        ev = []
        for u, k, md in zip(units, n, mood):
            for _ in range(int(k)):
                s = int(np.clip(np.rint(3.6 + md + rng.normal(0.0, 0.7)), 1, 5))
                ev.append((u, s, 1))
        return ev

    t = csat_events(unit_ids("ca", 500), -0.1)
    c = csat_events(unit_ids("cb", 500), 0.0)
    out.append(ratio_vector(
        "csat_mean_1_to_5", "mean", -0.02, "less", shuffled(rng, t), shuffled(rng, c),
        "CSAT 1..5 (integers), x=score y=1; per-user mood; treatment slightly worse"))

    # 6. rate whose numerator exceeds its denominator for some units (R < 1 overall):
    #    JS errors per session; a few users with broken clients emit many errors a session.
    rng = np.random.default_rng(106)

    def js_error_events(units, broken_share):
        n_sess = activity(rng, len(units), 2.5, 0.6)
        base = rng.beta(0.5, 6.0, size=len(units))
        broken = rng.random(len(units)) < broken_share
        ev = []
        for u, k, b, br in zip(units, n_sess, base, broken):
            lam = 3.0 if br else b
            for _ in range(int(k)):
                ev.append((u, 0, 1))
                for _ in range(int(rng.poisson(lam))):
                    ev.append((u, 1, 0))
        return ev

    t = js_error_events(unit_ids("ja", 600), 0.04)
    c = js_error_events(unit_ids("jb", 600), 0.03)
    out.append(ratio_vector(
        "js_errors_per_session", "rate", 0.0, "greater", shuffled(rng, t), shuffled(rng, c),
        "x_u > y_u for some units (broken clients: several errors a session); R < 1 overall"))

    # 7. rate with R > 1 overall (requests per session): iid variance is null
    rng = np.random.default_rng(107)

    def request_events(units, mult):
        n_sess = activity(rng, len(units), 1.5, 0.6)
        rate = rng.gamma(1.5, 2.0, size=len(units)) * mult
        ev = []
        for u, k, lam in zip(units, n_sess, rate):
            for _ in range(int(k)):
                ev.append((u, 0, 1))
                nreq = int(rng.poisson(lam))
                if nreq:
                    ev.append((u, nreq, 0))   # one row per session with its request count
        return ev

    t = request_events(unit_ids("qa", 400), 0.95)
    c = request_events(unit_ids("qb", 400), 1.0)
    out.append(ratio_vector(
        "requests_per_session_r_gt_1", "rate", -0.1, "less", shuffled(rng, t), shuffled(rng, c),
        "R > 1 (iid null); rows (u,0,1) per session and (u,k,0) with k requests"))

    # 8. tiny: < 64 units per arm, so G < 64 and several buckets empty
    rng = np.random.default_rng(108)
    t = checkout_events(rng, unit_ids("ta", 23), 1.0, beta=(1.0, 8.0))
    c = checkout_events(rng, unit_ids("tb", 31), 1.0, beta=(1.0, 8.0))
    out.append(ratio_vector(
        "tiny_error_rate", "rate", 0.0, "greater", shuffled(rng, t), shuffled(rng, c),
        "23 vs 31 units; per-event rows"))

    # 9. a small cohort's window: the control arm has no error at all (its own-centred
    #    variance is 0; the null-centred one is not)
    t = [(u, 0, 1) for u in unit_ids("za", 180)] + [("za1", 1, 0), ("za7", 1, 0), ("za7", 1, 0)]
    c = [(u, 0, 1) for u in unit_ids("zb", 190)]
    out.append(ratio_vector(
        "zero_errors_in_control", "rate", 0.0, "greater", shuffled(rng, t), shuffled(rng, c),
        "3 errors in 180 starts vs 0 in 190: the Wald variance of control is 0"))
    return out


# ------------------------------------------------------------------ C. quantiles
def inv_cdf_index(n, p):
    """1-based k: smallest k with k/n >= p (float division, as defined); k >= 1 (p=0 -> min).
    Cross-checked against exact rational arithmetic on the double p and against ceil(p*n)."""
    if p <= 0.0:
        return 1
    k = max(1, min(n, math.ceil(p * n)))
    while k > 1 and (k - 1) / n >= p:
        k -= 1
    while k < n and k / n < p:
        k += 1
    exact = max(1, math.ceil(Fraction(p) * n))
    if exact != k or max(1, min(n, math.ceil(p * n))) != k:
        print(f"  WARNING: quantile index ambiguity n={n} p={p!r}: float {k}, exact {exact}, "
              f"ceil(p*n) {math.ceil(p * n)}")
    # distance to the nearest k/n boundary, to flag razor-thin cases
    frac = p * n - math.floor(p * n)
    if 0 < frac < 1e-9 or 1 - frac < 1e-9:
        print(f"  WARNING: p*n within 1e-9 of an integer: n={n} p={p!r}")
    return k


def quantile_arm(events, q, iid):
    vals = sorted(v for _, v in events)
    n = len(vals)
    qhat = vals[inv_cdf_index(n, q) - 1]
    xu, yu = defaultdict(int), defaultdict(int)
    for u, v in events:
        yu[u] += 1
        if v <= qhat:
            xu[u] += 1
    nu = len(yu)
    F = sum(xu.values()) / n
    Vclu = nu / (nu - 1) * math.fsum((xu[u] - F * yu[u]) ** 2 for u in yu) / (n * n)
    Viid = F * (1 - F) / n
    deff = 1.0 if iid else max(1.0, Vclu / Viid)
    seF = math.sqrt(deff * q * (1 - q) / n)
    plo = max(0.0, q - 1.96 * seF)
    phi = min(1.0, q + 1.96 * seF)
    L = vals[inv_cdf_index(n, plo) - 1]
    U = vals[inv_cdf_index(n, phi) - 1]
    se = (U - L) / (2 * 1.96)
    # cross-check the order statistics with numpy's "inverted_cdf" quantile
    arr = np.array(vals)
    for pp, got in ((q, qhat), (plo, L), (phi, U)):
        assert float(np.quantile(arr, pp, method="inverted_cdf")) == got, (pp, got)
    assert math.isclose(F, math.fsum(xu.values()) / math.fsum(yu.values()), rel_tol=0)
    return dict(q=qhat, se=se, deff=deff, deff_raw=Vclu / Viid, n=n, units=nu, L=L, U=U, F=F)


def quantile_vector(name, q, margin, tail, treatment, control, note):
    r = 1.0 + margin
    res = {}
    for mode in ("clu", "iid"):
        t = quantile_arm(treatment, q, mode == "iid")
        c = quantile_arm(control, q, mode == "iid")
        d = t["q"] - r * c["q"]
        z = d / math.sqrt(t["se"] ** 2 + r * r * c["se"] ** 2)
        res[mode] = (t, c, z)
    t, c, z = res["clu"]
    ti, ci, zi = res["iid"]
    vec = {
        "name": name, "q": q, "margin": margin, "tail": tail, "note": note,
        "treatment": [[u, v] for u, v in treatment],
        "control": [[u, v] for u, v in control],
        "unit_level": {"q_t": t["q"], "se_t": t["se"], "deff_t": t["deff"],
                       "q_c": c["q"], "se_c": c["se"], "deff_c": c["deff"],
                       "z": z, "p": pval(z, tail),
                       # extras (not in the brief) to help debugging
                       "n_t": t["n"], "n_c": c["n"], "units_t": t["units"], "units_c": c["units"],
                       "lower_t": t["L"], "upper_t": t["U"], "lower_c": c["L"], "upper_c": c["U"]},
        "iid": {"se_t": ti["se"], "se_c": ci["se"], "z": zi,
                "p": pval(zi, tail)},   # "p" is an extra
    }
    med = lambda ev: float(np.median([v for _, v in ev]))
    print(f"[quantile] {name}: q={q} n t/c={t['n']}/{c['n']} units t/c={t['units']}/{c['units']}")
    print(f"        q_t={t['q']:.3f} q_c={c['q']:.3f} (ratio {t['q'] / c['q']:.3f}), "
          f"median ratio {med(treatment) / med(control):.3f}")
    print(f"        deff t={t['deff_raw']:.2f} c={c['deff_raw']:.2f}  se clu/iid "
          f"t={t['se'] / ti['se']:.2f} c={c['se'] / ci['se']:.2f}  z clu={z:.3f} iid={zi:.3f} "
          f"p={vec['unit_level']['p']:.4g}")
    return vec


def clip_ms(v):
    return r3(min(60000.0, max(1.0, v)))


def latency_sample(rng, units, mean_events, shape, sigma_user=0.4, slow_share=0.05,
                   slow_mult=3.0, median=120.0, sigma=0.7):
    """Clustered lognormal latencies: per-user multiplier, some users persistently slow."""
    n = activity(rng, len(units), mean_events, shape)
    mult = np.exp(rng.normal(0.0, sigma_user, size=len(units)))
    mult[rng.random(len(units)) < slow_share] *= slow_mult
    ev = []
    for u, k, m in zip(units, n, mult):
        for v in np.exp(rng.normal(math.log(median), sigma, size=int(k))) * m:
            ev.append((u, float(v)))
    return ev


def finalize(rng, ev, f=lambda v: v):
    return shuffled(rng, [(u, clip_ms(f(v))) for u, v in ev])


def quantile_section():
    out = []
    # 1. A/A clustered
    rng = np.random.default_rng(201)
    t = latency_sample(rng, unit_ids("pa", 650), 2.0, 0.5)
    c = latency_sample(rng, unit_ids("pb", 650), 2.0, 0.5)
    out.append(quantile_vector("p95_aa_clustered", 0.95, 0.1, "greater",
                               finalize(rng, t), finalize(rng, c),
                               "A/A; lognormal(ln 120, 0.7) x per-user lognormal(0, 0.4), "
                               "5% users persistently x3"))

    # 2. tail-only regression: 8% of treatment events x3 slower
    rng = np.random.default_rng(202)
    #    (narrow lognormal, sigma 0.35 and per-user sigma 0.15, so that x3 on 8% of the
    #    events moves p95 by ~+50% while the median moves by only a few percent)
    t = latency_sample(rng, unit_ids("ra", 650), 2.0, 0.5, sigma_user=0.15, slow_share=0.0,
                       sigma=0.35)
    c = latency_sample(rng, unit_ids("rb", 650), 2.0, 0.5, sigma_user=0.15, slow_share=0.0,
                       sigma=0.35)
    slow = rng.random(len(t)) < 0.08
    t = [(u, v * 3.0 if s else v) for (u, v), s in zip(t, slow)]
    out.append(quantile_vector("p95_tail_regression", 0.95, 0.1, "greater",
                               finalize(rng, t), finalize(rng, c),
                               "treatment: a random 8% of events x3; median ~unchanged"))

    # 3. pure location shift x1.3, median (q = 0.5)
    rng = np.random.default_rng(203)
    t = latency_sample(rng, unit_ids("sa", 650), 2.0, 0.5)
    c = latency_sample(rng, unit_ids("sb", 650), 2.0, 0.5)
    out.append(quantile_vector("p50_shift_x1_3", 0.5, 0.1, "greater",
                               finalize(rng, t, lambda v: v * 1.3), finalize(rng, c),
                               "treatment: every value x1.3; q = 0.5"))

    # 4. 5% treatment arm (A/A), non-inferiority
    rng = np.random.default_rng(204)
    t = latency_sample(rng, unit_ids("va", 90), 2.0, 0.5)
    c = latency_sample(rng, unit_ids("vb", 1710), 2.0, 0.5)
    out.append(quantile_vector("p95_5pct_treatment", 0.95, 0.2, "less",
                               finalize(rng, t), finalize(rng, c),
                               "90 vs 1710 units (5%); A/A; H1: q_T < 1.2 q_C"))

    # 5. heavy clustering: a few users with hundreds of events, slow ones among them
    rng = np.random.default_rng(205)

    def heavy(prefix):
        ev = latency_sample(rng, unit_ids(prefix, 500), 1.0, 1.0, slow_share=0.03)
        for i, (cnt, m) in enumerate([(420, 3.5), (300, 1.0), (250, 2.5), (180, 0.7), (150, 4.0)]):
            u = prefix + "-heavy" + str(i)
            for v in np.exp(rng.normal(math.log(120.0), 0.5, size=cnt)) * m:
                ev.append((u, float(v)))
        return ev

    out.append(quantile_vector("p95_heavy_clustering", 0.95, 0.0, "greater",
                               finalize(rng, heavy("ha")), finalize(rng, heavy("hb")),
                               "5 users with 150-420 events each (several slow) + 500 light "
                               "users; A/A"))
    return out


# ------------------------------------------------------------------ D. SRM e-process
def srm_run(windows, K, a):
    tau = KEY_MAX
    S = set()
    n_t = n_c = cross = 0
    log_e = 0.0
    after = []
    for w in windows:
        lo, hi = w["lo"], w["hi"]
        W = {}
        for u, arm in w["sightings"]:
            k = srm_key(u)
            W[k] = W.get(k, 0) | (1 if arm == "t" else 2)
        keys = sorted(W)
        if len(keys) > K:
            keys = keys[:K]
            tau_w = keys[-1]
        else:
            tau_w = KEY_MAX
        tau = min(tau, tau_w)
        S = {k for k in S if k <= tau}
        new = [k for k in keys if k <= tau and k not in S]   # keys already ascending
        for k in new:
            S.add(k)
            mask = W[k]
            if mask == 3:
                cross += 1
                continue
            x = 1 if mask == 1 else 0
            p_mid = (lo + hi) / 2
            q = (n_t + a * p_mid) / (n_t + n_c + a)
            q = min(max(q, 1e-6), 1 - 1e-6)
            m = min(max(q, lo), hi)
            log_e += math.log(q / m) if x else math.log((1 - q) / (1 - m))
            n_t += x
            n_c += 1 - x
        if len(S) > K:
            tau = sorted(S)[K // 2 - 1]
            S = {k for k in S if k <= tau}
        assert len(S) <= K and all(k <= tau for k in S)
        assert not after or tau <= int(after[-1]["tau"], 16)
        after.append({"n_t": n_t, "n_c": n_c, "crossover": cross, "log_e": log_e,
                      "tau": "0x%016x" % tau, "s_len": len(S)})
    return after


def srm_population(rng, prefix, n_units, share, mean_sightings, shape=0.5, cap=5):
    """Persistent users: each has an arm (treatment with prob `share`) and a gamma activity;
    per window a user is present with prob 1 - exp(-activity) and sighted 1 + Poisson
    (capped) times."""
    ids = unit_ids(prefix, n_units)
    arm = np.where(rng.random(n_units) < share, "t", "c")
    act = rng.gamma(shape, mean_sightings / shape, size=n_units)
    return ids, arm, act


def srm_window(rng, ids, arm, act, lo, hi, cross_share=0.003, cap=5, mask=None):
    sightings = []
    present = rng.random(len(ids)) < 1 - np.exp(-act)
    if mask is not None:
        present &= mask
    for i in np.nonzero(present)[0]:
        k = 1 + min(cap - 1, int(rng.poisson(act[i] * 0.5)))
        a = str(arm[i])
        for _ in range(k):
            sightings.append([ids[i], a])
        if rng.random() < cross_share:           # rare: also sighted in the other arm
            sightings.append([ids[i], "c" if a == "t" else "t"])
    idx = rng.permutation(len(sightings))
    return {"lo": lo, "hi": hi, "sightings": [sightings[j] for j in idx]}


def srm_vector(name, K, a, windows, note):
    after = srm_run(windows, K, a)
    thr = math.log(1000.0)
    le = [r["log_e"] for r in after]
    nd = [len({u for u, _ in w["sightings"]}) for w in windows]
    ns = sum(len(w["sightings"]) for w in windows)
    print(f"[srm] {name}: K={K} windows={len(windows)} sightings={ns} distinct/window={nd}")
    print(f"        log_e per window: {[round(x, 3) for x in le]}  max={max(le):.3f} "
          f"crosses ln(1000)={max(le) > thr}  tested={after[-1]['n_t'] + after[-1]['n_c']} "
          f"(n_t={after[-1]['n_t']}) crossover={after[-1]['crossover']} "
          f"s_len={[r['s_len'] for r in after]}")
    return {"name": name, "k": K, "a": a, "alpha": 0.001, "note": note,
            "windows": windows, "after": after}


def srm_section():
    out = []
    K, a = 256, 10.0

    # 1. correct 50/50, persistent heavy users over 8 windows
    rng = np.random.default_rng(301)
    ids, arm, act = srm_population(rng, "m", 1100, 0.5, 1.2)
    wins = [srm_window(rng, ids, arm, act, 0.5, 0.5) for _ in range(8)]
    out.append(srm_vector("correct_50_50_persistent", K, a, wins,
                          "true share 0.5 == null; persistent users seen in many windows"))

    # 2. 46/54 user split, null 0.5; persistent users plus churn (new users each window)
    #    K = 256 as specified: only ~K*(1+ln(N/K)) units are ever tested, too few for 46/54.
    rng = np.random.default_rng(302)
    wins = []
    for w in range(8):
        ids, arm, act = srm_population(rng, "n%d-" % w, 420, 0.46, 0.9)
        wins.append(srm_window(rng, ids, arm, act, 0.5, 0.5, cap=3))
    out.append(srm_vector("split_46_54_k256", K, a, wins,
                          "true share 0.46, null 0.5, fresh users every window; with K=256 "
                          "too few units are tested for log_e to reach ln(1000)"))

    # 2b. 46/54 with K = 4096 (two windows of ~6000 fresh units; eviction after window 2)
    rng = np.random.default_rng(312)
    wins = []
    for w in range(2):
        ids = unit_ids("o%d" % w, 6000)
        arm = np.where(rng.random(6000) < 0.46, "t", "c")
        s = [[u, str(x)] for u, x in zip(ids, arm)]
        s += [s[int(i)] for i in rng.integers(0, 6000, size=300)]   # a few repeat sightings
        idx = rng.permutation(len(s))
        wins.append({"lo": 0.5, "hi": 0.5, "sightings": [s[j] for j in idx]})
    out.append(srm_vector("split_46_54_k4096", 4096, a, wins,
                          "true share 0.46, null 0.5; K = 4096 so ~8000 units are tested "
                          "and log_e crosses ln(1000)"))

    # 2c. a stronger SRM at K = 256 (35/65), crosses ln(1000)
    rng = np.random.default_rng(322)
    wins = []
    for w in range(8):
        ids, arm, act = srm_population(rng, "k%d-" % w, 420, 0.35, 0.9)
        wins.append(srm_window(rng, ids, arm, act, 0.5, 0.5, cap=3))
    out.append(srm_vector("split_35_65_k256", K, a, wins,
                          "true share 0.35, null 0.5, fresh users every window, K = 256: "
                          "crosses ln(1000)"))

    # 3. 5% treatment, correct
    rng = np.random.default_rng(303)
    ids, arm, act = srm_population(rng, "f", 1100, 0.05, 1.0)
    wins = [srm_window(rng, ids, arm, act, 0.05, 0.05, cap=3) for _ in range(8)]
    out.append(srm_vector("correct_5pct_treatment", K, a, wins,
                          "true share 0.05 == null"))

    # 4. pending approval: null [0.2, 0.5]; true share 0.2 for 4 windows, then 0.5
    #    (seed 310 chosen among 304..329 so that the plug-in q dips below lo for a while, i.e. the
    #    projection m = lo path and non-zero increments are exercised; with q inside
    #    [lo, hi] every increment is exactly 0)
    rng = np.random.default_rng(PENDING_SEED)
    wins = []
    for w in range(8):
        share = 0.2 if w < 4 else 0.5
        ids, arm, act = srm_population(rng, "g%d-" % w, 450, share, 0.9)
        wins.append(srm_window(rng, ids, arm, act, 0.2, 0.5, cross_share=0.02, cap=3))
    out.append(srm_vector("advance_pending_0_2_to_0_5", K, a, wins,
                          "null interval [0.2, 0.5] (advance awaiting approval); the true "
                          "share moves 0.2 -> 0.5 after window 4; ~2% crossover sightings"))

    # 5. (extra) pending approval but the truth is ABOVE the interval: share 0.65 vs
    #    [0.2, 0.5] -> the m = hi projection; crosses ln(1000)
    rng = np.random.default_rng(305)
    wins = []
    for w in range(8):
        ids, arm, act = srm_population(rng, "h%d-" % w, 420, 0.65, 0.9)
        wins.append(srm_window(rng, ids, arm, act, 0.2, 0.5, cap=3))
    out.append(srm_vector("advance_pending_truth_above", K, a, wins,
                          "null interval [0.2, 0.5]; true share 0.65: crosses ln(1000)"))
    return out


# ------------------------------------------------------------------ output
def dump(data):
    """Top levels indented; each vector's fields on their own lines, values compact."""
    parts = ["{"]
    keys = list(data)
    for i, k in enumerate(keys):
        v = data[k]
        comma = "," if i < len(keys) - 1 else ""
        if isinstance(v, list) and v and isinstance(v[0], dict):
            parts.append(" %s: [" % json.dumps(k))
            for j, item in enumerate(v):
                c2 = "," if j < len(v) - 1 else ""
                fields = ["   %s: %s" % (json.dumps(f), json.dumps(x, separators=(",", ":"),
                                                                   ensure_ascii=False))
                          for f, x in item.items()]
                parts.append("  {\n" + ",\n".join(fields) + "\n  }" + c2)
            parts.append(" ]" + comma)
        else:
            parts.append(" %s: %s%s" % (json.dumps(k), json.dumps(v, ensure_ascii=False), comma))
    parts.append("}")
    return "\n".join(parts) + "\n"


def main():
    data = {
        "generator": {
            "script": "scripts/unit_vectors.py",
            "command": "python3 scripts/unit_vectors.py",
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "seeds": "numpy default_rng, fixed per vector: ratio 101-108, quantile 201-205, srm 301-305, 310 (PENDING_SEED), 312, 322",
            "conventions": [
                "sums via math.fsum; compare with a relative tolerance (~1e-9), not bitwise",
                "raw values rounded to 3 decimals before computing",
                "p-values: greater -> scipy.stats.norm.sf(z), less -> norm.cdf(z)",
                "quantile index: smallest k (1-based) with k/n >= p in double division; "
                "p <= 0 -> k = 1 (minimum); the Woodruff factor is the literal 1.96",
                "ratio n (unit_level n_t/n_c) = distinct unit ids in the arm's rows",
                "SRM W is keyed by the 62-bit key; 'more than K distinct units' = more than "
                "K distinct keys (no key collisions occur in these vectors)",
                "fields 'note', quantile unit_level n_*/units_*/lower_*/upper_*, quantile "
                "iid.p and srm 'alpha' are extras beyond the brief",
            ],
        },
        "hash": hash_section(),
        "ratio": ratio_section(),
        "quantile": quantile_section(),
        "srm": srm_section(),
    }
    text = dump(data)
    assert json.loads(text) == json.loads(json.dumps(data))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    sizes = {k: len(json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode())
             for k, v in data.items()}
    print(f"wrote {OUT} ({len(text.encode())} bytes); per section: {sizes}")


if __name__ == "__main__":
    sys.exit(main())
