#!/usr/bin/env python3
"""Generate tests/data/innovation_vectors.json: reference values for the change-point
detector's window score after a band's first window (`stats::ratio_innovation_test`).

Run (from the crate root; numpy and scipy only, seeded):

    pip install numpy scipy
    python3 scripts/innovation_vectors.py

Written from the definition in docs/STATISTICS.md §4, not from the Rust code. Users keep
their arm, activity and error propensity for the whole band. Each vector holds, per arm,
the per-unit totals (unit, errors, started checkouts) of the band's earlier windows and
of this window. With δ = this window's effect, δ′ = the earlier windows' effect:

  δ = R_T − r·R_C (r = 1 + margin); each period's null centres
  R_C* = (X_T + X_C)/(r·Y_T + Y_C), R_T* = r·R_C*; arm weights 1 (T) and r (C)

  g_b  = (x_b − R·y_b)/Y          (R the period's own ratio)     -> θ = Σ g_b g′_b / Σ g′_b², clamped to [0, 1],
                                   over control's terms
  h_b  = w·(x_b − centre·y_b)/Y   (the null-centred term)        -> V = Σ_arms G/(G−1) Σ_b (h_b − θ h′_b)²
  z    = (δ − θ·δ′)/√V,  p one-sided (greater: norm.sf, less: norm.cdf)

b runs over the 64 unit-hash buckets ("bucketed", what the engine keeps; G = buckets
non-empty in either period) and, as an independent check of what the buckets estimate,
over the units themselves ("unit_level": θ from numpy's least squares of the stacked
unit terms, G = the arm's units). "plain" is this window's own test (the score before
this change), for comparison.
"""
import json
import math
import platform
import sys
from pathlib import Path

import numpy as np
import scipy
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from unit_vectors import bucket64, unit_ids  # noqa: E402  (the unit hash, checked elsewhere)

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "innovation_vectors.json"


def pval(z, tail):
    return float(norm.sf(z)) if tail == "greater" else float(norm.cdf(z))


def population(rng, prefix, n, mean_checkouts=2.0, shape=0.5, beta=(0.6, 25.0)):
    """Persistent users: gamma activity (checkouts per window), beta error propensity."""
    return dict(ids=unit_ids(prefix, n), act=rng.gamma(shape, mean_checkouts / shape, size=n),
                prop=rng.beta(*beta, size=n))


def period(rng, pop, windows, err_mult, retry=0.7):
    """Per-unit totals over `windows` windows: (unit, errors, started checkouts); users
    with no checkout are left out. An error is retried with probability `retry`."""
    rows = []
    for u, a, p in zip(pop["ids"], pop["act"], pop["prop"]):
        p = min(0.95, p * err_mult)
        k = int(rng.poisson(a * windows))
        x = y = 0
        for _ in range(k):
            tries = 0
            while True:
                y += 1
                if rng.random() >= p:
                    break
                x += 1
                tries += 1
                if tries > 4 or rng.random() >= retry:
                    break
        if y:
            rows.append([u, x, y])
    return rows


def by_bucket(rows):
    x, y = np.zeros(64), np.zeros(64)
    for u, xu, yu in rows:
        b = bucket64(u)
        x[b] += xu
        y[b] += yu
    return x, y


def by_unit(rows, units):
    idx = {u: i for i, u in enumerate(units)}
    x, y = np.zeros(len(units)), np.zeros(len(units))
    for u, xu, yu in rows:
        x[idx[u]] += xu
        y[idx[u]] += yu
    return x, y


def score(arms, delta_now, delta_earlier, tail, lstsq):
    """arms: (w, (x, y) now, (x, y) earlier, centre now, centre earlier) over the same
    clusters (buckets or units); θ from the last arm (control)."""
    _, (xn, yn), (xe, ye), _, _ = arms[-1]
    rn, re = xn.sum() / yn.sum(), xe.sum() / ye.sum()
    gn, ge = (xn - rn * yn) / yn.sum(), (xe - re * ye) / ye.sum()
    if lstsq:
        theta = float(np.linalg.lstsq(ge[:, None], gn, rcond=None)[0][0])
    else:
        theta = math.fsum(gn * ge) / math.fsum(ge * ge)
    theta = min(1.0, max(0.0, theta))
    variance = 0.0
    for w, (xn, yn), (xe, ye), cn, ce in arms:
        keep = (xn != 0) | (yn != 0) | (xe != 0) | (ye != 0)
        g = int(keep.sum())
        h = w * (xn - cn * yn) / yn.sum() - theta * w * (xe - ce * ye) / ye.sum()
        variance += g / (g - 1) * math.fsum(h[keep] ** 2)
    z = (delta_now - theta * delta_earlier) / math.sqrt(variance)
    return {"theta": theta, "variance": variance, "z": z, "p": pval(z, tail)}


def plain(t, c, r, tail):
    """This window's own null-variance ratio test (as `ratio_test_null`), bucketed."""
    (xt, yt), (xc, yc) = t, c
    rc0 = (xt.sum() + xc.sum()) / (r * yt.sum() + yc.sum())

    def v(x, y, centre):
        keep = (x != 0) | (y != 0)
        g = int(keep.sum())
        return g / (g - 1) * math.fsum(((x - centre * y)[keep]) ** 2) / y.sum() ** 2

    z = (xt.sum() / yt.sum() - r * xc.sum() / yc.sum()) / math.sqrt(
        v(xt, yt, r * rc0) + r * r * v(xc, yc, rc0))
    return {"z": z, "p": pval(z, tail)}


def relative_vector(name, seed, n_t, n_c, earlier_windows, mult_earlier, mult_now,
                    margin, tail, note):
    rng = np.random.default_rng(seed)
    pt, pc = population(rng, name[:3] + "t", n_t), population(rng, name[:3] + "c", n_c)
    rows = {
        "treatment_earlier": period(rng, pt, earlier_windows, mult_earlier),
        "treatment_now": period(rng, pt, 1, mult_now),
        "control_earlier": period(rng, pc, earlier_windows, 1.0),
        "control_now": period(rng, pc, 1, 1.0),
    }
    r = 1.0 + margin
    out = {"name": name, "kind": "relative", "margin": margin, "tail": tail, "note": note}
    out.update(rows)
    for level, agg in (("bucketed", by_bucket), ("unit_level", None)):
        if agg is None:
            def agg(rs, ids):
                return by_unit(rs, ids)
            tn, te = agg(rows["treatment_now"], pt["ids"]), agg(rows["treatment_earlier"], pt["ids"])
            cn, ce = agg(rows["control_now"], pc["ids"]), agg(rows["control_earlier"], pc["ids"])
        else:
            tn, te = agg(rows["treatment_now"]), agg(rows["treatment_earlier"])
            cn, ce = agg(rows["control_now"]), agg(rows["control_earlier"])

        def centres(t, c):
            rc0 = (t[0].sum() + c[0].sum()) / (r * t[1].sum() + c[1].sum())
            return r * rc0, rc0, t[0].sum() / t[1].sum() - r * c[0].sum() / c[1].sum()

        tcn, ccn, dn = centres(tn, cn)
        tce, cce, de = centres(te, ce)
        arms = [(1.0, tn, te, tcn, tce), (r, cn, ce, ccn, cce)]
        out[level] = score(arms, dn, de, tail, lstsq=(level == "unit_level"))
        if level == "bucketed":
            out["plain"] = plain(tn, cn, r, tail)
    report(out)
    return out


def report(v):
    b, u = v["bucketed"], v["unit_level"]
    extra = f" plain z {v['plain']['z']:.3f}" if "plain" in v else ""
    print(f"[{v['name']}] theta bucketed {b['theta']:.3f} unit {u['theta']:.3f}; "
          f"z bucketed {b['z']:.3f} unit {u['z']:.3f}{extra}")


def main():
    cases = [
        relative_vector("aa_persistent", 401, 900, 900, 3, 1.0, 1.0, 0.0, "greater",
                        "A/A; the same users in three earlier windows and this one"),
        relative_vector("regression_now", 402, 900, 900, 3, 1.0, 1.5, 0.0, "greater",
                        "treatment error propensity x1.5 in this window only"),
        relative_vector("regression_all_band", 403, 900, 900, 2, 1.5, 1.5, 0.1, "greater",
                        "x1.5 in every window of the band, margin 0.1: the innovation keeps "
                        "part of the effect"),
        relative_vector("small_cohort", 404, 60, 60, 1, 1.0, 1.0, 0.0, "greater",
                        "60 users per arm: empty buckets, few errors"),
        relative_vector("noninferiority_less", 405, 700, 700, 4, 1.0, 1.0, -0.05, "less",
                        "H1: R_T < 0.95 R_C"),
    ]
    data = {
        "generator": {
            "script": "scripts/innovation_vectors.py",
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "seeds": "numpy default_rng 401-405",
            "rows": "per-unit totals [unit, errors, started checkouts] per period",
        },
        "cases": cases,
    }
    text = json.dumps(data, separators=(",", ":")) + "\n"
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({len(text)} bytes)")


if __name__ == "__main__":
    sys.exit(main())
