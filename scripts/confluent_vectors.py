#!/usr/bin/env python3
"""Generate tests/data/byo/confluent.json: Confluent-framed Avro reference vectors.

The bytes are produced by Confluent's own Python serializer, not by us:

    python3 -m venv /tmp/cvenv
    /tmp/cvenv/bin/pip install "confluent-kafka[avro]==2.16.1" "fastavro==1.13.1" "avro==1.12.2"
    /tmp/cvenv/bin/python scripts/confluent_vectors.py     # from the crate root

* confluent_kafka.schema_registry.avro.AvroSerializer (auto.register.schemas=True)
  against the in-memory registry SchemaRegistryClient.new_client({"url": "mock://guardrail"}),
  SerializationContext("checkout-avro", MessageField.VALUE) -> subject "checkout-avro-value".
* Schema v1 (SCHEMA_V1 below, registered verbatim, newlines included) and v2 (= v1 plus
  `region` string default "unknown" right after `user`, `tags` removed) under the same
  subject, so v2 gets its own schema id.
* Every record is checked here: byte 0 == 0, bytes 1..5 == big-endian schema id, and the
  datum (bytes 5..) is decoded with fastavro.schemaless_reader, with Apache Avro's own
  Python reader (avro.io.DatumReader, an implementation independent of fastavro, which
  the serializer uses internally) and with confluent's AvroDeserializer; all three must
  give back the input dict.
* "value" in the output is the effective datum: fields a record omitted so that the
  serializer wrote the schema default (region, latency_ms, amount_cents in a few records)
  are filled in with that default. bytes/fixed are lowercase hex; occurred_at is the
  timestamp-millis as an integer (the Python readers return a datetime; the script
  converts it back exactly). "score" (Avro float) is given as the float32 value widened to
  a double, plus "score_f32_bits"; "latency_ms" (double) also as "latency_ms_f64_bits"
  (u64 bits, or null), so a reader can compare exactly.
* "invalid": framed payloads that a decoder must reject (each one is checked here to be
  rejected by fastavro and/or the framing rules).

Deterministic: fixed random seed; the mock registry hands out ids 1, 2, ... in order.
"""
import datetime
import hashlib
import io
import json
import os
import random
import struct
import sys

import avro
import avro.io
import avro.schema
import confluent_kafka
import fastavro
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

PINNED = {"confluent-kafka": "2.16.1", "fastavro": "1.13.1", "avro": "1.12.2"}

TOPIC = "checkout-avro"
SUBJECT = TOPIC + "-value"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "byo", "confluent.json")

SCHEMA_V1 = """{"type":"record","name":"CheckoutEvent","namespace":"com.acme.events","fields":[
 {"name":"id","type":"string"},
 {"name":"occurred_at","type":{"type":"long","logicalType":"timestamp-millis"}},
 {"name":"user","type":{"type":"record","name":"User","fields":[
   {"name":"id","type":"long"},
   {"name":"tier","type":["null","string"],"default":null}]}},
 {"name":"step","type":{"type":"enum","name":"Step","symbols":["VIEW","START","PAY","DONE","FAIL"]}},
 {"name":"latency_ms","type":["null","double"],"default":null},
 {"name":"amount_cents","type":["null","long"],"default":null},
 {"name":"device","type":{"type":"map","values":"string"}},
 {"name":"experiments","type":{"type":"array","items":{"type":"record","name":"Assignment","fields":[
   {"name":"flag","type":"string"},{"name":"variant","type":"string"}]}}},
 {"name":"tags","type":{"type":"array","items":"string"}},
 {"name":"score","type":"float"},
 {"name":"retries","type":"int"},
 {"name":"internal","type":"boolean"},
 {"name":"payload","type":"bytes"},
 {"name":"checksum","type":{"type":"fixed","name":"Md5","size":16}}]}"""

SCHEMA_V2 = """{"type":"record","name":"CheckoutEvent","namespace":"com.acme.events","fields":[
 {"name":"id","type":"string"},
 {"name":"occurred_at","type":{"type":"long","logicalType":"timestamp-millis"}},
 {"name":"user","type":{"type":"record","name":"User","fields":[
   {"name":"id","type":"long"},
   {"name":"tier","type":["null","string"],"default":null}]}},
 {"name":"region","type":"string","default":"unknown"},
 {"name":"step","type":{"type":"enum","name":"Step","symbols":["VIEW","START","PAY","DONE","FAIL"]}},
 {"name":"latency_ms","type":["null","double"],"default":null},
 {"name":"amount_cents","type":["null","long"],"default":null},
 {"name":"device","type":{"type":"map","values":"string"}},
 {"name":"experiments","type":{"type":"array","items":{"type":"record","name":"Assignment","fields":[
   {"name":"flag","type":"string"},{"name":"variant","type":"string"}]}}},
 {"name":"score","type":"float"},
 {"name":"retries","type":"int"},
 {"name":"internal","type":"boolean"},
 {"name":"payload","type":"bytes"},
 {"name":"checksum","type":{"type":"fixed","name":"Md5","size":16}}]}"""

STEPS = ["VIEW", "START", "PAY", "DONE", "FAIL"]
FLAGS = ["checkout_v2", "pay_button_color", "one_click", "früh_zugang", "🚀_launch"]
VARIANTS = ["control", "treatment", "A", "B", "variant-Ü", "日本"]
DEVICE_KEYS = ["type", "os", "locale", "model", "büro"]
DEVICE_VALUES = ["mobile", "desktop", "iOS", "Android", "de-DE", "ja-JP", "Pixel 8", "ü", "日本", "😀", ""]
TIERS = ["gold", "silver", "frei", "プレミアム", "💎", ""]
REGIONS = ["eu-west-1", "us-east-1", "ap-northeast-1", "südwest", "東京", ""]
TAGS = ["new", "returning", "ü", "日本", "🛒", "", "a" * 70]

# 2026-12-02T00:00:00Z in ms
T0_MS = int(datetime.datetime(2026, 12, 2, tzinfo=datetime.timezone.utc).timestamp()) * 1000
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
I32_MIN, I32_MAX = -(2**31), 2**31 - 1


def f32(x):
    """Round a Python float to the nearest float32 (returned widened to a double)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def f32_bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


def f64_bits(x):
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def dt_to_ms(v):
    if isinstance(v, datetime.datetime):
        d = v - EPOCH
        return (d.days * 86400 + d.seconds) * 1000 + d.microseconds // 1000
    return v


def make_record(rng, i, version):
    """One varied record. Returns (input_dict, effective_dict)."""
    n_exp = [0, 1, 3][i % 3]
    n_dev = [0, 1, 3, 2][i % 4]
    n_tags = [0, 1, 3, 5][(i // 2) % 4]
    # user.id: spread over signs and magnitudes, with fixed edge cases
    uid_cases = [0, 1, -1, 2**62, -(2**62), 2**31, -(2**31) - 1, 63, 64, -64, -65, I64_MAX, I64_MIN]
    if i < len(uid_cases):
        uid = uid_cases[i]
    else:
        uid = rng.choice([1, -1]) * rng.randrange(0, 2**rng.choice([7, 14, 21, 35, 49, 62]))
    # timestamps around 2026-12-02, a few before the day starts
    occurred = T0_MS + rng.randrange(-3 * 3600 * 1000, 36 * 3600 * 1000)
    if i == 0:
        occurred = T0_MS
    tier = None if i % 3 == 1 else TIERS[i % len(TIERS)]
    latency = None if i % 4 == 0 else round(rng.uniform(0, 2500), rng.choice([0, 1, 3, 6])) + (0.0 if i % 5 else 0.5)
    if i == 5:
        latency = 0.1
    if i == 6:
        latency = -0.0
    if i == 7:
        latency = 1e300
    if i == 9:
        latency = 5e-324  # smallest subnormal double
    amount_cases = {3: 0, 4: I64_MAX, 8: I64_MIN, 10: -1, 11: 2**53 + 1}
    if i in amount_cases:
        amount = amount_cases[i]
    else:
        amount = None if i % 3 == 0 else rng.randrange(0, 10**7)
    device = {}
    for k in DEVICE_KEYS[:n_dev]:
        device[k] = rng.choice(DEVICE_VALUES)
    experiments = [{"flag": FLAGS[(i + j) % len(FLAGS)], "variant": rng.choice(VARIANTS)} for j in range(n_exp)]
    tags = [TAGS[(i + j) % len(TAGS)] for j in range(n_tags)]
    score_cases = {0: 0.0, 1: -0.0, 2: 1.0, 3: 3.4028234663852886e38, 4: 1.401298464324817e-45, 5: -2.5}
    score = f32(score_cases.get(i, rng.uniform(-1000, 1000)))
    retries_cases = {0: 0, 1: I32_MAX, 2: I32_MIN, 3: -1, 4: 64, 5: -65}
    retries = retries_cases.get(i, rng.randrange(0, 8))
    plen = [0, 1, 16, 64, 200][i % 5]
    payload = bytes(rng.randrange(256) for _ in range(plen))
    checksum = hashlib.md5(payload).digest()
    ids = ["evt-%04d" % i, "ü-%d" % i, "日本-%d" % i, "🚀-%d" % i, ""]
    rec = {
        "id": ids[i % len(ids)] if i % 7 else "evt-%04d" % i,
        "occurred_at": occurred,
        "user": {"id": uid, "tier": tier},
        "step": STEPS[i % len(STEPS)],
        "latency_ms": latency,
        "amount_cents": amount,
        "device": device,
        "experiments": experiments,
        "tags": tags,
        "score": score,
        "retries": retries,
        "internal": bool(i % 2),
        "payload": payload,
        "checksum": checksum,
    }
    if version == 2:
        del rec["tags"]
        # insert region right after user, to keep document order = schema order
        region = REGIONS[i % len(REGIONS)]
        rec = {k: rec[k] for k in ["id", "occurred_at", "user"]} | {"region": region} | {
            k: v for k, v in rec.items() if k not in ("id", "occurred_at", "user")
        }
    effective = dict(rec)
    inp = dict(rec)
    # a few records leave defaulted fields out: the serializer writes the default
    if version == 2 and i % 6 == 0:
        del inp["region"]
        effective["region"] = "unknown"
    if i % 10 == 4 and inp["latency_ms"] is None:
        del inp["latency_ms"]
    if i % 10 == 3 and version == 1:
        # omit a null union
        inp["amount_cents"] = None
        effective["amount_cents"] = None
        del inp["amount_cents"]
    if i % 8 == 2:
        inp["user"] = {"id": uid}  # tier omitted -> default null
        effective["user"] = {"id": uid, "tier": None}
    # the serializer is also handed a datetime for a few records (logical type conversion)
    if i % 9 == 1:
        inp["occurred_at"] = EPOCH + datetime.timedelta(milliseconds=occurred)
    return inp, effective


def to_json_value(d):
    out = {}
    for k, v in d.items():
        if isinstance(v, (bytes, bytearray)):
            out[k] = v.hex()
        elif isinstance(v, dict) and k == "user":
            out[k] = dict(v)
        else:
            out[k] = v
        if k == "score":
            out["score_f32_bits"] = f32_bits(v)
        if k == "latency_ms":
            out["latency_ms_f64_bits"] = None if v is None else f64_bits(v)
    return out


def normalize_decoded(d):
    d = dict(d)
    d["occurred_at"] = dt_to_ms(d["occurred_at"])
    return d


def eq_exact(a, b):
    """Deep equality that also tells -0.0 from 0.0 and int from float."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return f64_bits(a) == f64_bits(b)
    if isinstance(a, dict):
        return list(a.keys()) == list(b.keys()) and all(eq_exact(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(eq_exact(x, y) for x, y in zip(a, b))
    return a == b


def main():
    versions = {
        "confluent-kafka": confluent_kafka.__version__,
        "fastavro": fastavro.__version__,
        "avro": avro.__version__,
    }
    for k, v in PINNED.items():
        if versions[k] != v:
            sys.exit("expected %s==%s, found %s (see the header for the pip line)" % (k, v, versions[k]))

    rng = random.Random(20261202)
    # In 2.16.1 the plain constructor SchemaRegistryClient({"url": "mock://..."}) builds an HTTP
    # client (which then fails on the mock:// scheme); new_client() is the factory that returns
    # the in-memory MockSchemaRegistryClient for mock:// URLs.
    client = SchemaRegistryClient.new_client({"url": "mock://guardrail"})
    assert type(client).__name__ == "MockSchemaRegistryClient", type(client)
    ctx = SerializationContext(TOPIC, MessageField.VALUE)
    ser1 = AvroSerializer(client, SCHEMA_V1, conf={"auto.register.schemas": True})
    ser2 = AvroSerializer(client, SCHEMA_V2, conf={"auto.register.schemas": True})
    deser = AvroDeserializer(client)

    plan = [(1, i) for i in range(40)] + [(2, i) for i in range(20)]
    records = []
    raw_by_version = {}
    for version, i in plan:
        inp, eff = make_record(rng, i, version)
        data = (ser1 if version == 1 else ser2)(inp, ctx)
        raw_by_version.setdefault(version, []).append(data)
        records.append((version, data, eff))

    # the ids the registry handed out, and the text it returns for them
    schemas = []
    id_of_version = {}
    for version, text in ((1, SCHEMA_V1), (2, SCHEMA_V2)):
        rs = client.lookup_schema(SUBJECT, confluent_kafka.schema_registry.Schema(text, "AVRO"))
        got = client.get_schema(rs.schema_id)
        assert rs.version == version, (rs.version, version)
        assert got.schema_type == "AVRO"
        assert got.schema_str == text, "registry returned a different text"
        id_of_version[version] = rs.schema_id
        schemas.append({"id": rs.schema_id, "version": rs.version, "schema": got.schema_str})
    assert id_of_version[1] != id_of_version[2]
    assert client.get_subjects() == [SUBJECT], client.get_subjects()

    parsed_fa = {v: fastavro.parse_schema(json.loads(s["schema"])) for v, s in zip((1, 2), schemas)}
    parsed_ap = {v: avro.schema.parse(s["schema"]) for v, s in zip((1, 2), schemas)}

    out_records = []
    for version, data, eff in records:
        sid = id_of_version[version]
        assert data[0] == 0, "magic byte"
        assert struct.unpack(">I", data[1:5])[0] == sid, "schema id"
        body = data[5:]
        # 1. fastavro
        buf = io.BytesIO(body)
        dec = fastavro.schemaless_reader(buf, parsed_fa[version], None)
        assert buf.tell() == len(body), "fastavro left bytes unread"
        assert eq_exact(normalize_decoded(dec), eff), (dec, eff)
        # 2. Apache Avro's Python implementation
        buf = io.BytesIO(body)
        dec2 = avro.io.DatumReader(parsed_ap[version]).read(avro.io.BinaryDecoder(buf))
        assert buf.tell() == len(body), "avro left bytes unread"
        assert eq_exact(normalize_decoded(dec2), eff), (dec2, eff)
        # 3. Confluent's own deserializer (looks the id up in the registry)
        dec3 = deser(data, ctx)
        assert eq_exact(normalize_decoded(dec3), eff), (dec3, eff)
        out_records.append({"schema_id": sid, "hex": data.hex(), "value": to_json_value(eff)})

    # ---- invalid payloads ----
    good = raw_by_version[1][1]
    unknown_id = max(id_of_version.values()) + 97
    invalid = []

    def both_reject(body, version=1):
        """Both Python readers must reject the datum. (fastavro alone is not enough: it indexes
        the union branch list with Python semantics, so branch index -1 picks the last branch
        and the datum only fails later, at the checksum, by running out of bytes.)"""
        try:
            fastavro.schemaless_reader(io.BytesIO(body), parsed_fa[version], None)
            return False
        except Exception:
            pass
        try:
            avro.io.DatumReader(parsed_ap[version]).read(avro.io.BinaryDecoder(io.BytesIO(body)))
            return False
        except Exception:
            return True

    bad = b"\x00" + struct.pack(">I", unknown_id) + good[5:]
    try:
        deser(bad, ctx)
        raise AssertionError("unknown id accepted")
    except Exception as e:  # SchemaRegistryError 40400
        assert "Not Found" in str(e) or "40400" in str(e), e
    invalid.append({"hex": bad.hex(), "why": "unknown schema id", "schema_id": unknown_id})

    for magic in (b"\x02", b"\xff"):
        bad = magic + good[1:]
        try:
            deser(bad, ctx)
            raise AssertionError("wrong magic accepted")
        except Exception as e:
            assert "magic" in str(e).lower(), e
        invalid.append({"hex": bad.hex(), "why": "wrong magic byte"})
    # Magic byte 1 is not "wrong" to Confluent's deserializer: it is the newer framing
    # (magic 1 + 16-byte schema GUID). Here it is followed by an id-framed payload, so the
    # "GUID" is garbage and the lookup fails with 40400.
    bad = b"\x01" + good[1:]
    try:
        deser(bad, ctx)
        raise AssertionError("magic 1 accepted")
    except Exception as e:
        assert "40400" in str(e), e
    invalid.append({"hex": bad.hex(), "why": "magic byte 1 (GUID framing) with an unknown GUID"})

    # truncated in the middle of the datum (several cut points, each rejected by both readers)
    for cut in (len(good) // 2, len(good) - 1, 6):
        bad = good[:cut]
        assert both_reject(bad[5:]), cut
        invalid.append({"hex": bad.hex(), "why": "truncated datum"})
    # header only: the datum is empty
    bad = good[:5]
    assert both_reject(bad[5:])
    invalid.append({"hex": bad.hex(), "why": "truncated datum"})

    for bad in (b"", b"\x00", b"\x00\x00\x00\x00"):
        try:
            deser(bad, ctx)
            raise AssertionError("short payload accepted")
        except Exception:
            pass
        invalid.append({"hex": bad.hex(), "why": "shorter than header"})

    # hand-made datums for schema v1 (id, occurred_at, user.id, user.tier union index, step ...)
    def zz(n):  # zig-zag varint
        n = (n << 1) ^ (n >> 63)
        out = bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            if n:
                out.append(b | 0x80)
            else:
                out.append(b)
                return bytes(out)

    hdr = b"\x00" + struct.pack(">I", id_of_version[1])

    def datum(id_part=zz(1) + b"x", ts=zz(T0_MS), tier=zz(0), step=zz(0)):
        # schema v1 in field order: id, occurred_at, user{id, tier}, step, latency_ms (null),
        # amount_cents (null), device {}, experiments [], tags [], score 1.0, retries 0,
        # internal false, payload b"", checksum 16 zero bytes
        return (id_part + ts + zz(7) + tier + step + zz(0) + zz(0) + zz(0) + zz(0) + zz(0)
                + struct.pack("<f", 1.0) + zz(0) + b"\x00" + zz(0) + bytes(16))

    ok = hdr + datum()
    fastavro.schemaless_reader(io.BytesIO(ok[5:]), parsed_fa[1], None)  # hand-made baseline decodes
    assert normalize_decoded(deser(ok, ctx))["user"] == {"id": 7, "tier": None}
    cases = [
        (hdr + datum(tier=zz(2)), "union branch index out of range"),
        (hdr + datum(tier=zz(-1)), "negative union branch index"),
        (hdr + datum(step=zz(5)), "enum index out of range"),
        (hdr + datum(id_part=zz(-3) + b"abc"), "negative string length"),
        (hdr + datum(id_part=zz(2) + b"\xc3\x28"), "invalid UTF-8 in string"),
        (hdr + datum(id_part=zz(1000000) + b"abc"), "string length past end of input"),
        (hdr + datum(ts=b"\xff" * 10 + b"\x01"), "varint longer than 10 bytes"),
    ]
    for bad, why in cases:
        assert both_reject(bad[5:]), why
        invalid.append({"hex": bad.hex(), "why": why})

    doc = {
        "generator": "confluent-kafka %s AvroSerializer, mock:// registry (checked with fastavro %s and avro %s)"
        % (versions["confluent-kafka"], versions["fastavro"], versions["avro"]),
        "topic": TOPIC,
        "subject": SUBJECT,
        "schemas": schemas,
        "records": out_records,
        "invalid": invalid,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote %s: %d schemas %s, %d records, %d invalid" % (
        os.path.normpath(OUT), len(schemas), [(s["id"], s["version"]) for s in schemas], len(out_records), len(invalid)))


if __name__ == "__main__":
    main()
