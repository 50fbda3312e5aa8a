#!/usr/bin/env python3
"""Reads scale-out partials (schemas/window_partial.avsc) with code that is not guardrail's.

Used by tests/interop_python.rs. For every file in DIR (one single-object encoded
WindowPartial each, in name order) it checks the 10-byte header against fastavro's
CRC-64-AVRO fingerprint of the schema file, decodes the body with
fastavro.schemaless_reader (every byte must be used), and decodes each quantile's HDR
histogram (V2 + DEFLATE) with the `hdrhistogram` package from PyPI (module hdrh).
Prints one JSON array: per file the flag key, window end and per cohort and arm the
counts, per aggregate num/den (rate), n/sum (mean), or the histogram's total count and
p50/p95 in its integer unit (quantile), and the unit sample's size, tau and full.

  partials.py DIR
"""
import base64
import io
import json
import os
import sys

import fastavro
import fastavro.schema
from hdrh.histogram import HdrHistogram

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_schema():
    with open(os.path.join(ROOT, "schemas", "window_partial.avsc")) as f:
        return fastavro.parse_schema(json.load(f))


def header(schema):
    """C3 01 + the 8 fingerprint bytes as fastavro writes them (little-endian)."""
    pcf = fastavro.schema.to_parsing_canonical_form(schema)
    return b"\xc3\x01" + bytes.fromhex(fastavro.schema.fingerprint(pcf, "CRC-64-AVRO"))


def agg(name, a):
    kind = name.rsplit(".", 1)[-1]
    if kind == "RateAgg":
        return {"kind": "rate", "num": a["num"], "den": a["den"], "buckets": bucket_len(a)}
    if kind == "MeanAgg":
        return {"kind": "mean", "n": a["n"], "sum": a["sum"], "buckets": bucket_len(a)}
    if kind != "QuantileAgg":
        sys.exit(f"unknown aggregate {name}")
    out = {"kind": "quantile", "total": None, "p50": None, "p95": None,
           "cells": sum(c["count"] for c in a["units"] or [])}
    if a["hist"] is not None:
        # hdrh reads the base64 of the compressed (V2 + DEFLATE) form.
        h = HdrHistogram.decode(base64.b64encode(a["hist"]))
        out.update(total=h.get_total_count(), p50=h.get_value_at_percentile(50.0),
                   p95=h.get_value_at_percentile(95.0))
    return out


def bucket_len(a):
    u = a["units"]
    if u is None:
        return None
    if len(u["x"]) != len(u["y"]):
        sys.exit("unit buckets x and y differ in length")
    return len(u["x"])


def arm(a):
    s = a["sample"]
    return {"exposures": a["exposures"], "events": a["events"],
            "aggs": [agg(name, x) for name, x in a["aggs"]],
            "sample": {"keys": len(s["keys"]), "tau": s["tau"], "full": s["full"]}}


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    directory = sys.argv[1]
    schema = load_schema()
    expected = header(schema)
    out = []
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            raw = f.read()
        if raw[:10] != expected:
            sys.exit(f"{name}: header {raw[:10].hex()} is not the single-object header of "
                     f"window_partial.avsc ({expected.hex()})")
        body = io.BytesIO(raw[10:])
        # Union branches that are records come back as (full name, record).
        rec = fastavro.schemaless_reader(body, schema, return_record_name=True,
                                         return_record_name_override=True)
        if body.tell() != len(raw) - 10:
            sys.exit(f"{name}: {len(raw) - 10 - body.tell()} bytes after the record")
        out.append({
            "file": name,
            "flag_key": rec["flag_key"],
            "window_end": round(rec["window_end"].timestamp() * 1000),
            "cohorts": [{"cohort": c["cohort"], "treatment": arm(c["treatment"]),
                         "control": arm(c["control"])} for c in rec["cohorts"]],
        })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
