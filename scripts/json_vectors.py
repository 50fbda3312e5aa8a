#!/usr/bin/env python3
"""Generate tests/data/byo/json.json: Segment-style `track` events as JSON text, with the
values a decoder must extract from each, computed by Python's json module and datetime.

    python3 scripts/json_vectors.py        # CPython 3.11, standard library only; from the crate root

Every "text" is produced by json.dumps (ensure_ascii True or False, sort_keys or a shuffled
key order, several indent / separator settings, sometimes CRLF line breaks or surrounding
whitespace). Numbers that json.dumps cannot write in the wanted form (1.5e3, -2E-4, 0.0,
big integers) go in as placeholders that are replaced by the literal number text afterwards.
Each text is then parsed back with json.loads and "expected" is computed from that parse (and
checked against what the generator meant to write).

Expected fields (null when the field is absent or JSON null):
  message_id      messageId
  event           event
  user_id         userId (string or null; absent in some records, null in others)
  anonymous_id    anonymousId
  timestamp_ms    `timestamp` (RFC 3339: Z / +hh:mm / -hh:mm, 0, 1, 3, 6 or 9 fraction digits)
                  as epoch milliseconds, floor (fractions past the millisecond are dropped;
                  every timestamp is after 1970 so truncation == floor). sentAt and
                  originalTimestamp, present in some records, are NOT used.
  received_at_ms  receivedAtMs, an integer number of epoch milliseconds
  device_type     context.device.type
  country         context.location.country
  latency_ms      properties.latency_ms: a JSON number (integer, fraction, or exponent form,
                  e.g. 1.5e3 -> 1500.0) or null (absent or null)
  revenue         properties.revenue (number or null)
  flags           list of [flag, variant], concatenated in this order of styles:
                    1. properties.experiments, an object {flag: variant}, in document order
                    2. context.flags, a list of {"key": flag, "variant": variant}, in list order
                    3. every property whose name starts with "exp_": [name without "exp_",
                       value], in document order of properties (e.g. exp_checkout_v2 ->
                       ["checkout_v2", ...]).
                  No flag name occurs in two styles of one record. Decoys that are NOT flags:
                  properties.experiment_id / experiment_name / variation_name (Experiment
                  Viewed), properties.expires_in, context.traits.exp_beta.

"invalid": texts a decoder must reject ("hex" instead of "text" when the bytes are not valid
UTF-8). Each has "python_json_accepts": whether json.loads accepts it. Python accepts some on
purpose: lone surrogate escapes (it builds a str with a lone surrogate), 1e999 (-> inf),
NaN/Infinity literals, and depth-200 nesting (its limit is the C stack); they are invalid for
guardrail because they are not representable in UTF-8 / f64, or break the depth limit.
"""
import datetime
import json
import os
import platform
import random
import re
import sys

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "byo", "json.json")
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
N_RECORDS = 50

EVENTS = ["Checkout Started", "Order Completed", "Checkout Failed", "Experiment Viewed"]
DEVICE_TYPES = ["mobile", "desktop", "tablet", "ios", "android"]
OS_NAMES = ["iOS", "Android", "Mac OS X", "Windows", "Linux"]
LOCALES = ["en-US", "de-DE", "ja-JP", "fr-CA", "tr-TR"]
COUNTRIES = ["United States", "Germany", "日本", "Türkiye", "India", "🇩🇪", "Côte d’Ivoire"]
FLAGS = ["checkout_v2", "pay_button_color", "one_click", "früh_zugang", "🚀_launch", "shipping_eta", "upsell"]
VARIANTS = ["control", "treatment", "A", "B", "variant-Ü", "日本", "😀", "on", "off"]
USER_IDS = ["user-1001", "u_ß", "ユーザー42", "user-😀", "x" * 40, "97"]
ERROR_REASONS = ["card_declined", "timeout", "3ds_failed", "Zahlung abgelehnt – bitte erneut"]

RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})$"
)


class Raw:
    """A JSON number to be written literally (e.g. "1.5e3")."""

    def __init__(self, text):
        self.text = text
        self.value = json.loads(text)


def rfc3339_to_ms(s):
    """Two independent computations: datetime.fromisoformat, and integer arithmetic."""
    m = RFC3339.match(s)
    assert m, s
    dt = datetime.datetime.fromisoformat(s)  # 3.11: accepts Z, truncates >6 fraction digits
    d = dt - EPOCH
    ms1 = (d.days * 86400 + d.seconds) * 1000 + d.microseconds // 1000
    y, mo, da, h, mi, se, frac, off = m.groups()
    days = (datetime.date(int(y), int(mo), int(da)) - datetime.date(1970, 1, 1)).days
    secs = days * 86400 + int(h) * 3600 + int(mi) * 60 + int(se)
    if off != "Z":
        sign = 1 if off[0] == "+" else -1
        secs -= sign * (int(off[1:3]) * 3600 + int(off[4:6]) * 60)
    ms2 = secs * 1000 + (int((frac or "").ljust(3, "0")[:3]) if frac else 0)
    assert ms1 == ms2, (s, ms1, ms2)
    return ms1


def fmt_ts(base_ms, style):
    """RFC 3339 text for an instant (ms precision + extra digits), in a given style."""
    micro_extra, nano_extra = 417, 289  # sub-millisecond digits, dropped by the floor
    offsets = {"Z": 0, "+02:00": 120, "-05:30": -330, "+00:00": 0, "+05:45": 345, "-10:00": -600}
    frac_kind, off = style
    local = datetime.datetime.fromtimestamp(base_ms // 1000, datetime.timezone.utc) + datetime.timedelta(
        minutes=offsets[off]
    )
    ms = base_ms % 1000
    head = local.strftime("%Y-%m-%dT%H:%M:%S")
    if frac_kind == 0:
        frac = ""
    elif frac_kind == 1:
        frac = ".%d" % (ms // 100)
    elif frac_kind == 3:
        frac = ".%03d" % ms
    elif frac_kind == 6:
        frac = ".%03d%03d" % (ms, micro_extra)
    else:
        frac = ".%03d%03d%03d" % (ms, micro_extra, nano_extra)
    return head + frac + off


TS_STYLES = [
    (0, "Z"), (3, "Z"), (6, "Z"), (0, "+02:00"), (3, "-05:30"), (9, "Z"), (1, "Z"),
    (6, "+02:00"), (0, "-05:30"), (3, "+00:00"), (0, "+05:45"), (3, "-10:00"),
]


def shuffled(rng, d):
    items = list(d.items())
    rng.shuffle(items)
    return dict(items)


def deep_shuffle(rng, obj):
    if isinstance(obj, dict):
        return shuffled(rng, {k: deep_shuffle(rng, v) for k, v in obj.items()})
    if isinstance(obj, list):
        return [deep_shuffle(rng, v) for v in obj]
    return obj


def dumps_with_raw(obj, **kw):
    """json.dumps, with Raw numbers swapped for placeholders and then for their literal text."""
    raws = []

    def sub(o):
        if isinstance(o, Raw):
            raws.append(o.text)
            return "@@RAW%d@@" % (len(raws) - 1)
        if isinstance(o, dict):
            return {k: sub(v) for k, v in o.items()}
        if isinstance(o, list):
            return [sub(v) for v in o]
        return o

    text = json.dumps(sub(obj), **kw)
    for i, t in enumerate(raws):
        ph = '"@@RAW%d@@"' % i
        assert text.count(ph) == 1
        text = text.replace(ph, t)
    return text


def plain(obj):
    """The Python value json.loads gives back for obj (Raw -> its parsed value)."""
    if isinstance(obj, Raw):
        return obj.value
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    return obj


def sort_deep(obj):
    if isinstance(obj, dict):
        return {k: sort_deep(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list):
        return [sort_deep(v) for v in obj]
    return obj


def extract(doc):
    """The expected values, from a json.loads result."""
    ctx = doc.get("context") or {}
    props = doc.get("properties") or {}
    flags = []
    exps = props.get("experiments")
    if isinstance(exps, dict):
        flags += [[k, v] for k, v in exps.items()]
    cflags = ctx.get("flags")
    if isinstance(cflags, list):
        flags += [[f["key"], f["variant"]] for f in cflags]
    flags += [[k[4:], v] for k, v in props.items() if k.startswith("exp_")]
    names = [f[0] for f in flags]
    assert len(names) == len(set(names)), names
    return {
        "message_id": doc["messageId"],
        "event": doc["event"],
        "user_id": doc.get("userId"),
        "anonymous_id": doc["anonymousId"],
        "timestamp_ms": rfc3339_to_ms(doc["timestamp"]),
        "received_at_ms": doc.get("receivedAtMs"),
        "device_type": (ctx.get("device") or {}).get("type"),
        "country": (ctx.get("location") or {}).get("country"),
        "latency_ms": props.get("latency_ms"),
        "revenue": props.get("revenue"),
        "flags": flags,
    }


def make_event(rng, i):
    """One event as a Python structure (may contain Raw numbers) + the flags meant."""
    event = EVENTS[i % 4] if i % 7 != 6 else rng.choice(EVENTS)
    base_ms = 1796169600000 + 10 * 3600 * 1000 + rng.randrange(-14 * 3600 * 1000, 14 * 3600 * 1000)
    if i == 0:
        base_ms = 1796169600000 + 10 * 3600 * 1000  # 2026-12-02T10:00:00Z exactly
    ts = fmt_ts(base_ms, TS_STYLES[i % len(TS_STYLES)])
    doc = {
        "messageId": "msg-%04d-%08x" % (i, rng.getrandbits(32)) if i % 5 else "ajs-next-%032x" % rng.getrandbits(128),
        "type": "track",
        "event": event,
    }
    # userId: string, null, or absent
    if i % 5 == 1:
        doc["userId"] = None
    elif i % 5 != 3:
        doc["userId"] = USER_IDS[i % len(USER_IDS)]
    doc["anonymousId"] = "anon-%d-%s" % (i, ["ü", "日本", "😀", "a"][i % 4]) if i % 3 == 0 else "%032x" % rng.getrandbits(128)
    doc["timestamp"] = ts
    if i % 3 == 0:
        doc["sentAt"] = fmt_ts(base_ms + 1234, (3, "Z"))
    if i % 4 == 1:
        doc["originalTimestamp"] = fmt_ts(base_ms - 5000, (3, "+02:00"))
    if i % 6 != 5:
        doc["receivedAtMs"] = base_ms + rng.randrange(50, 5000)

    # context
    ctx = {}
    if i % 8 != 7:
        ctx["device"] = {"type": DEVICE_TYPES[i % len(DEVICE_TYPES)], "id": "dev-%d" % i}
        if i % 2:
            ctx["device"]["manufacturer"] = "Apple"
            ctx["device"]["model"] = None
    ctx["os"] = {"name": OS_NAMES[i % len(OS_NAMES)], "version": "%d.%d" % (10 + i % 8, i % 4)}
    ctx["locale"] = LOCALES[i % len(LOCALES)]
    if i % 9 != 4:
        ctx["location"] = {"country": COUNTRIES[i % len(COUNTRIES)], "city": ["Berlin", "東京", "São Paulo"][i % 3]}
        if i % 2 == 0:
            ctx["location"]["latitude"] = Raw(["52.52", "3.5e1", "-2E-4", "0.0"][i % 4])
    if i % 3 == 2:
        ctx["library"] = {"name": "analytics.js", "version": "4.1.0"}
        ctx["traits"] = {"exp_beta": "decoy", "email": "ü@example.com", "vip": False, "tags": []}
    if i % 4 == 3:
        ctx["page"] = {"path": "/checkout", "referrer": None, "title": "Kasse – Schritt 2", "search": "?q=\"x\"&a=\\b"}
        ctx["ip"] = "203.0.113.%d" % (i % 250)

    props = {}
    # flags in three styles; names never shared across styles within one record
    names = list(FLAGS)
    rng.shuffle(names)
    style_mask = [0b001, 0b010, 0b100, 0b011, 0b101, 0b110, 0b111, 0b000][i % 8]
    if style_mask & 4:
        names.remove("checkout_v2")  # reserved for properties.exp_checkout_v2
    if style_mask & 1:
        k = rng.choice([0, 1, 2, 3]) if i % 16 != 0 else 0
        props["experiments"] = {names.pop(): rng.choice(VARIANTS) for _ in range(k)}
    if style_mask & 2:
        k = rng.choice([0, 1, 2, 3]) if i % 16 != 1 else 0
        ctx["flags"] = [{"key": names.pop(), "variant": rng.choice(VARIANTS)} for _ in range(k)]
        if ctx["flags"] and i % 2:
            ctx["flags"][0]["reason"] = "RULE_MATCH"
            ctx["flags"][-1] = {"variant": ctx["flags"][-1]["variant"], "key": ctx["flags"][-1]["key"], "value": True}
    if style_mask & 4:
        props["exp_checkout_v2"] = rng.choice(VARIANTS)
        if i % 3 == 0 and names:
            props["exp_" + names.pop()] = rng.choice(VARIANTS)

    # latency: integer, fraction, exponent form, missing, or null
    lat_kind = i % 7
    if lat_kind == 0:
        props["latency_ms"] = rng.randrange(1, 3000)
    elif lat_kind == 1:
        props["latency_ms"] = round(rng.uniform(0, 3000), rng.choice([1, 2, 3]))
    elif lat_kind == 2:
        props["latency_ms"] = Raw(["1.5e3", "2.5E+2", "125e-1", "1E3", "0.0", "-0", "7.25e0"][(i // 7) % 7])
    elif lat_kind == 3:
        props["latency_ms"] = None
    elif lat_kind == 4:
        pass
    elif lat_kind == 5:
        props["latency_ms"] = rng.choice([0, 1, 999999, 2**31])
    else:
        props["latency_ms"] = rng.uniform(0, 1) * 1000
    # revenue
    if event == "Order Completed":
        props["revenue"] = [49.99, 120, 0, 1e-2, 1234567.89, Raw("1.999e2")][i % 6]
        props["currency"] = ["EUR", "USD", "JPY"][i % 3]
        props["order_id"] = "ord-%d" % i
        props["products"] = [
            {"product_id": "p%d" % j, "name": ["Schuhe", "靴", "👟 Sneaker"][j % 3], "price": Raw(["1.5e3", "19.9", "0"][j % 3]), "quantity": j + 1}
            for j in range(i % 4)
        ]
    elif i % 5 == 2:
        props["revenue"] = None
    elif event == "Checkout Started" and i % 2:
        props["revenue"] = 10 + i
    if event == "Checkout Failed":
        props["reason"] = ERROR_REASONS[i % len(ERROR_REASONS)]
        props["retryable"] = bool(i % 2)
    if event == "Experiment Viewed":
        props["experiment_id"] = "exp-%d" % i
        props["experiment_name"] = "Checkout redesign"
        props["variation_name"] = "B"
    props["checkout_id"] = "co-%d" % (i // 2)
    if i % 5 == 4:
        props["expires_in"] = Raw("6.02e+23")
    # unknown nested junk
    if i % 4 == 0:
        doc["integrations"] = {"All": True, "Mixpanel": False, "Amplitude": {"session_id": Raw("1.7961696e12")}}
    if i % 6 == 3:
        doc["_metadata"] = {"bundled": [], "unbundled": ["Segment.io"], "nested": [[1, [2, [3, None]]], {"a": {"b": {"c": []}}}]}
    if i % 10 == 7:
        doc["extra"] = {
            "big": Raw("123456789012345678901234567890"),
            "neg": Raw("-9223372036854775809"),
            "tiny": Raw("4.9e-324"),
            "esc": "quote\" backslash\\ slash/ ctl\b\f\n\r\t nul\u0000 del\u007f ls\u2028 ps\u2029",
            "mixed": [True, False, None, 0, -1, Raw("-0.0"), "", {}],
        }
    doc["context"] = ctx
    doc["properties"] = props
    if i % 11 == 5:
        doc["version"] = 2
    return doc


def encode(rng, i, doc):
    """Pick an encoding variant for record i; return (text, description)."""
    ensure_ascii = i % 2 == 0
    order = ["natural", "sorted", "shuffled"][i % 3]
    if order == "shuffled":
        doc = deep_shuffle(rng, doc)
    layout = [
        dict(),  # ", " and ": "
        dict(separators=(",", ":")),
        dict(indent=2),
        dict(indent="\t", separators=(",", ": ")),
        dict(indent=0),
        dict(indent=4, separators=(" ,", " : ")),
    ][i % 6]
    text = dumps_with_raw(doc, ensure_ascii=ensure_ascii, sort_keys=(order == "sorted"), **layout)
    extra = []
    if i % 7 == 3 and "indent" in layout:
        text = text.replace("\n", "\r\n")  # raw newlines only occur as whitespace
        extra.append("crlf")
    if i % 5 == 4:
        text = " \n\t" + text + "\r\n "
        extra.append("surrounding whitespace")
    desc = "ensure_ascii=%s, keys %s, %s%s" % (
        ensure_ascii,
        order,
        ", ".join("%s=%r" % kv for kv in layout.items()) or "default separators",
        "".join(", " + e for e in extra),
    )
    return text, desc, doc


def invalid_cases(valid_texts):
    base = json.dumps(
        {"messageId": "m-bad", "type": "track", "event": "Checkout Started", "userId": "u1", "anonymousId": "a1",
         "timestamp": "2026-12-02T10:00:00Z", "properties": {"latency_ms": 12}},
        separators=(",", ":"),
    )
    t0 = valid_texts[0]
    lat = '"latency_ms":12'
    assert base.count(lat) == 1

    def lat_as(v):
        return base.replace(lat, '"latency_ms":' + v)
    out = [
        (t0[: len(t0) // 2], "truncated text"),
        (t0[:-1], "truncated text (missing closing brace)"),
        (base[: base.index('"a1"') + 2], "truncated text (inside a string)"),
        (base[: base.index(lat) + len(lat) - 2], "truncated text (after a colon)"),
        (base + " x", "trailing garbage"),
        (base + "}", "trailing garbage (extra closing brace)"),
        (base + "{}", "trailing garbage (a second value)"),
        (base.replace('"u1"', '"\\ud800"'), "lone surrogate escape \\ud800"),
        (base.replace('"u1"', '"ab\\udc00"'), "lone low surrogate escape \\udc00"),
        (base.replace('"u1"', '"\\ud83d\\u0041"'), "high surrogate escape followed by a non-surrogate escape"),
        (base.replace('"u1"', '"\\ud83d x"'), "high surrogate escape followed by plain text"),
        (base.replace('"u1"', '"u\x011"'), "control character U+0001 inside a string"),
        (base.replace('"u1"', '"u\n1"'), "raw newline inside a string"),
        (base.replace('"u1"', '"u\t1"'), "raw tab inside a string"),
        (base.replace('"u1"', '"u\x1f1"'), "control character U+001F inside a string"),
        (base.replace('"u1"', '"\\x41"'), "invalid escape \\x"),
        (base.replace('"u1"', '"\\u12G4"'), "invalid \\u escape"),
        (lat_as("[" * 200 + "]" * 200), "nesting depth 200 (arrays)"),
        (lat_as("1e999"), "number out of f64 range 1e999"),
        (lat_as("-1e999"), "number out of f64 range -1e999"),
        (lat_as("NaN"), "NaN literal"),
        (lat_as("Infinity"), "Infinity literal"),
        (lat_as("012"), "leading zero"),
        (lat_as("+12"), "leading plus"),
        (lat_as(".5"), "no digit before the decimal point"),
        (lat_as("1."), "no digit after the decimal point"),
        (lat_as("1e"), "no digit in the exponent"),
        (lat_as("12,"), "trailing comma in an object"),
        (lat_as("[1,2,]"), "trailing comma in an array"),
        (base.replace('"userId":"u1"', "'userId':'u1'"), "single-quoted strings"),
        (base.replace('"userId"', "userId"), "unquoted key"),
        (base.replace('"type":"track",', '"type":"track",/* c */'), "comment"),
        (base.replace('"u1"', "True"), "capitalised literal True"),
        ("", "empty text"),
        (" \n\t ", "only whitespace"),
        ("[" + base + "]", "top level is an array, not an object"),
        ('"Checkout Started"', "top level is a string, not an object"),
    ]
    cases = [{"text": t, "why": w} for t, w in out]
    hexes = [
        (base.encode().replace(b'"u1"', b'"u\xff1"'), "invalid UTF-8: byte 0xff"),
        (base.encode().replace(b'"u1"', b'"\xc0\xaf"'), "invalid UTF-8: overlong encoding C0 AF"),
        (base.encode().replace(b'"u1"', b'"\xed\xa0\x80"'), "invalid UTF-8: encoded surrogate ED A0 80 (CESU-8)"),
        (base.encode().replace(b'"u1"', b'"\xe6\x97"'), "invalid UTF-8: truncated 3-byte sequence"),
        (base.encode().replace(b'"u1"', b'"\xf4\x90\x80\x80"'), "invalid UTF-8: code point above U+10FFFF"),
        (base.encode().replace(b'"u1"', b'"\x80"'), "invalid UTF-8: lone continuation byte"),
        (base.encode().replace(b'"u1"', b'"u1"').replace(b'"Checkout Started"', b'"Checkout\xa0Started"'),
         "invalid UTF-8: Latin-1 byte A0 in the event name"),
    ]
    for b, w in hexes:
        try:
            b.decode("utf-8")
            raise AssertionError("valid UTF-8: " + w)
        except UnicodeDecodeError:
            pass
        cases.append({"hex": b.hex(), "why": w})
    for c in cases:
        try:
            if "hex" in c:
                json.loads(bytes.fromhex(c["hex"]).decode("utf-8"))
            else:
                json.loads(c["text"])
            c["python_json_accepts"] = True
        except (ValueError, UnicodeDecodeError, RecursionError):
            c["python_json_accepts"] = False
    expected_accepts = {
        "lone surrogate escape \\ud800", "lone low surrogate escape \\udc00",
        "high surrogate escape followed by a non-surrogate escape", "high surrogate escape followed by plain text",
        "nesting depth 200 (arrays)", "number out of f64 range 1e999", "number out of f64 range -1e999",
        "NaN literal", "Infinity literal",
        "top level is an array, not an object", "top level is a string, not an object",
    }
    got = {c["why"] for c in cases if c["python_json_accepts"]}
    assert got == expected_accepts, got ^ expected_accepts
    return cases


def main():
    if sys.version_info[:2] != (3, 11):
        print("warning: written for CPython 3.11, running %s" % platform.python_version(), file=sys.stderr)
    rng = random.Random(20261202)
    records = []
    texts = []
    seen = {"ascii_escapes": 0, "surrogate_pairs": 0, "raw_non_ascii": 0, "exponent": 0}
    for i in range(N_RECORDS):
        doc = make_event(rng, i)
        text, desc, dumped = encode(rng, i, doc)
        parsed = json.loads(text)
        assert parsed == plain(doc)
        exp = extract(parsed)
        # what the generator meant, from the structure it dumped (key order as written)
        meant = plain(dumped)
        if "keys sorted" in desc:
            meant = sort_deep(meant)
        assert json.dumps(exp) == json.dumps(extract(meant)), (exp, extract(meant))
        records.append({"text": text, "encoding": desc, "expected": exp})
        texts.append(text)
        if re.search(r"\\u[0-9a-f]{4}", text):
            seen["ascii_escapes"] += 1
        if re.search(r"\\ud[89ab][0-9a-f]{2}\\ud[c-f][0-9a-f]{2}", text):
            seen["surrogate_pairs"] += 1
        if any(ord(ch) > 127 for ch in text):
            seen["raw_non_ascii"] += 1
        if re.search(r"[:\[,]\s*-?\d+(\.\d+)?[eE][+-]?\d", text):
            seen["exponent"] += 1
    assert all(v > 0 for v in seen.values()), seen
    invalid = invalid_cases(texts)
    doc = {
        "generator": "python json (CPython %s)" % platform.python_version(),
        "conventions": {
            "timestamp_ms": "epoch ms of `timestamp` (RFC 3339), floor; sentAt/originalTimestamp ignored",
            "flags": "properties.experiments object (document order), then context.flags list ({key, variant}), "
                     "then properties.exp_<name> fields as [<name>, value] (document order)",
            "missing": "absent and JSON null both give null",
        },
        "records": records,
        "invalid": invalid,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote %s: %d records (%s), %d invalid (%d accepted by python json)" % (
        os.path.normpath(OUT), len(records), seen, len(invalid), sum(c["python_json_accepts"] for c in invalid)))


if __name__ == "__main__":
    main()
