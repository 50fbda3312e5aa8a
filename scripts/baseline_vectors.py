#!/usr/bin/env python3
"""Reference vector for the rolling-baseline test (src/rules/baseline_tests.rs).

Unit-level traffic of one cohort: N baseline windows and one judged window, each user
(a unit) with its own error propensity and 1-4 started checkouts; units fall in 64
buckets (user index mod 64, as any fixed assignment would). The baseline is the N
windows pooled; the judged window is tested against it with the clustered score test
of SPEC §5.1 (null-constrained centres, bucket totals as clusters), p from
scipy.stats.norm.sf. Also the textbook per-user delta method on the same data, which
the bucketed variance approximates.

    python3 scripts/baseline_vectors.py > tests/data/baseline_vectors.json
"""
import json

import numpy as np
from scipy.stats import norm

B = 64


def window(rng, users, propensity, rate, active=0.4):
    rows = []
    for u in range(users):
        if rng.random() >= active:
            continue
        starts = int(rng.integers(1, 5))
        errors = int(rng.binomial(starts, min(1.0, rate * propensity[u])))
        rows.append((u, errors, starts))
    return rows


def buckets(rows):
    x, y = np.zeros(B), np.zeros(B)
    for u, e, s in rows:
        x[u % B] += e
        y[u % B] += s
    return x, y


def centred(x, y, c):
    keep = (x != 0) | (y != 0)
    g = keep.sum()
    d = x[keep] - c * y[keep]
    return g / (g - 1) * (d * d).sum() / y.sum() ** 2


def case(seed, n_windows, users, base_rate, judged_rate, margin):
    rng = np.random.default_rng(seed)
    propensity = rng.gamma(2.0, 0.5, users)
    base = [window(rng, users, propensity, base_rate) for _ in range(n_windows)]
    judged = window(rng, users, propensity, judged_rate)
    wins = [buckets(r) for r in base]
    xc = sum(w[0] for w in wins)
    yc = sum(w[1] for w in wins)
    xt, yt = buckets(judged)
    r = 1.0 + margin
    rc0 = (xt.sum() + xc.sum()) / (r * yt.sum() + yc.sum())
    var = centred(xt, yt, r * rc0) + r * r * centred(xc, yc, rc0)
    delta = xt.sum() / yt.sum() - r * xc.sum() / yc.sum()
    z = delta / np.sqrt(var)
    # Textbook per-user delta method (Wald form) for comparison.
    def per_user(rows):
        e = np.array([a for _, a, _ in rows], float)
        s = np.array([b for _, _, b in rows], float)
        n = len(rows)
        rr = e.sum() / s.sum()
        return rr, n / (n - 1) * ((e - rr * s) ** 2).sum() / s.sum() ** 2
    pooled_rows = {}
    for rows in base:
        for u, e, s in rows:
            a, b = pooled_rows.get(u, (0, 0))
            pooled_rows[u] = (a + e, b + s)
    rt, vt = per_user(judged)
    rc, vc = per_user([(u, a, b) for u, (a, b) in pooled_rows.items()])
    z_user = (rt - r * rc) / np.sqrt(vt + r * r * vc)
    return {
        "seed": seed,
        "margin": margin,
        "baseline": [{"x": w[0].tolist(), "y": w[1].tolist()} for w in wins],
        "judged": {"x": xt.tolist(), "y": yt.tolist()},
        "baseline_value": xc.sum() / yc.sum(),
        "treatment_value": xt.sum() / yt.sum(),
        "z": z,
        "p": norm.sf(z),
        "p_per_user_delta_method": norm.sf(z_user),
    }


print(json.dumps({
    "cases": [
        case(1, 4, 3000, 0.02, 0.02, 0.2),
        case(2, 4, 3000, 0.02, 0.03, 0.2),
        case(3, 8, 2000, 0.05, 0.07, 0.1),
    ]
}, indent=1))
