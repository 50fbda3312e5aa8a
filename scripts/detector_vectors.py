#!/usr/bin/env python3
"""Generate tests/data/detector_vectors.json: reference values for the change-point
e-detector (src/rules/stats.rs, `Detector`).

Run (from the crate root; scipy for the normal quantile):

    pip install scipy
    python3 scripts/detector_vectors.py

An INDEPENDENT computation from the written definition, not from the Rust recursion: for
one-sided window p-values p_1..p_n, z_j = norm.isf(p_j), drifts theta with weights pi,
change-point prior w_k = (a+1)/((k+a)(k+a+1)) (a = 0: 1/(k(k+1)); a = 3 beside a band
mSPRT):

    M_n = sum_theta pi_theta * sum_{k<=n} w_k * prod_{j=k..n} exp(theta z_j - theta^2/2)
          + sum_{k>n} w_k,

the future change points' mass sum_{k>n} w_k taken as 1 - sum_{k<=n} w_k (summed, not
from the closed form the engine uses),
summed term by term (every change point separately, log-sum-exp), where the engine
keeps one running sum per drift. Stored: ln M_n after every window.
"""
import json
import math
import platform
from pathlib import Path

import scipy
from scipy.stats import norm

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "detector_vectors.json"
DRIFTS = [1.0, 2.0, 3.0]


def logsumexp(xs):
    m = max(xs)
    return m + math.log(math.fsum(math.exp(x - m) for x in xs))


def log_m(ps, weights, a):
    z = [float(norm.isf(p)) for p in ps]
    w = [(a + 1) / ((k + a) * (k + a + 1)) for k in range(1, len(z) + 1)]
    out = []
    for n in range(1, len(z) + 1):
        terms = [math.log(1.0 - math.fsum(w[:n]))]
        for theta, pi in zip(DRIFTS, weights):
            for k in range(1, n + 1):
                s = math.fsum(theta * z[j] - theta * theta / 2 for j in range(k - 1, n))
                terms.append(math.log(pi) + math.log(w[k - 1]) + s)
        out.append(logsumexp(terms))
    return out


SEQUENCES = {
    "null_like": [0.5, 0.31, 0.77, 0.12, 0.93, 0.45, 0.6, 0.2],
    "regression_from_window_5": [0.4, 0.7, 0.55, 0.3, 0.02, 0.004, 0.01, 0.0007, 0.003],
    "severe_at_once": [1e-6, 1e-9, 1e-12],
    "recovered": [0.001, 0.002, 0.5, 0.9, 0.95, 0.99, 0.7],
}
WEIGHTS = {"shipped": [0.2, 0.6, 0.2], "equal": [1 / 3, 1 / 3, 1 / 3]}

PRIORS = {"from_start": 0.0, "beside_band": 3.0}

cases = [
    {"name": f"{s}/{w}/{pr}", "p": ps, "weights": ws, "prior_offset": a,
     "log_m": log_m(ps, ws, a)}
    for s, ps in SEQUENCES.items()
    for w, ws in WEIGHTS.items()
    for pr, a in PRIORS.items()
]
OUT.write_text(json.dumps({
    "generator": f"scripts/detector_vectors.py, Python {platform.python_version()}, scipy {scipy.__version__}",
    "drifts": DRIFTS,
    "cases": cases,
}, indent=1) + "\n")
for c in cases:
    print(f"{c['name']:40s} ln M_n = {', '.join(f'{x:.3f}' for x in c['log_m'])}")
