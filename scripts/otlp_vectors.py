#!/usr/bin/env python3
"""Generate tests/data/byo/otlp.json: OTLP reference vectors for src/ingest/otlp.rs.

The payloads are made by the official OpenTelemetry protobuf classes, not by guardrail:

    python3 -m venv /tmp/otlpvenv
    /tmp/otlpvenv/bin/pip install "opentelemetry-proto==1.45.2" "protobuf==7.36.2"
    /tmp/otlpvenv/bin/python scripts/otlp_vectors.py      # from the crate root

* Requests are built with opentelemetry.proto.collector.{trace,logs}.v1 messages
  (ExportTraceServiceRequest, ExportLogsServiceRequest) and serialized with
  SerializeToString(). A few messages carry unknown fields of every wire type (varint,
  64-bit, length-delimited, group, 32-bit), appended to their bytes and parsed back so
  that the official serializer writes them out again: a decoder must skip them.
* "otlp_json" is the OTLP/JSON form: google.protobuf.json_format.MessageToDict(
  use_integers_for_enums=True) (lowerCamelCase keys, int64/fixed64 as strings,
  bytesValue as base64), with traceId/spanId/parentSpanId rewritten from base64 to
  lowercase hex as the OTLP specification requires. "otlp_json_ascii" is the same
  document with every non-ASCII character escaped (\\uXXXX), to exercise unescaping.
  Each JSON document is checked to parse back (json_format.ParseDict, ids back to
  base64) to the request without its unknown fields.
* "protobuf_boundaries": the offsets at which the top-level message can be cut and
  still be a valid (shorter) message; a cut anywhere else must be rejected.
* "events": the guardrail events the preset mapping of src/ingest/otlp.rs (module
  doc) derives, computed here by an independent implementation of those rules over the
  parsed protobuf messages. "skipped"/"total": spans or log records without a flag
  evaluation / all of them. Body latency_ms is a double (exact: (end - start) / 1e6 with
  one rounding of the difference to double, as Rust's `as f64 / 1e6`).

Deterministic: fixed random seed.
"""
import base64
import json
import math
import os
import random
import sys
from decimal import Decimal

import google.protobuf
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    EntityRef,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

OTEL_PROTO_VERSION = "1.45.2"
PROTOBUF_VERSION = "7.36.2"

# --------------------------------------------------------------------------------------
# Building messages.


def any_value(v):
    if isinstance(v, AnyValue):
        return v
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, str):
        return AnyValue(string_value=v)
    if isinstance(v, bytes):
        return AnyValue(bytes_value=v)
    if isinstance(v, list):
        return AnyValue(array_value=ArrayValue(values=[any_value(x) for x in v]))
    if isinstance(v, dict):
        return AnyValue(kvlist_value=KeyValueList(values=attrs(v)))
    raise TypeError(v)


def attrs(d):
    """KeyValues from a dict, or from a list of pairs (to repeat a key)."""
    items = d.items() if isinstance(d, dict) else d
    return [KeyValue(key=k, value=any_value(v)) for k, v in items]


def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def tag(field, wt):
    return varint(field << 3 | wt)


# One unknown field of each wire type.
UNKNOWN = (
    tag(1000, 0) + varint(2**63 + 5)
    + tag(1001, 1) + bytes(range(8))
    + tag(1002, 2) + varint(5) + b"\xff\x00junk"[:5]
    + tag(1003, 3) + tag(1, 0) + varint(7) + tag(2, 2) + varint(1) + b"x" + tag(1003, 4)
    + tag(1004, 5) + bytes(range(4))
)


def with_unknown(msg):
    """The message with unknown fields appended, as the official parser keeps them."""
    out = type(msg)()
    out.ParseFromString(msg.SerializeToString() + UNKNOWN)
    assert out.SerializeToString().endswith(UNKNOWN)
    return out


def tid(n):
    return bytes.fromhex(f"{n:032x}")


def sid(n):
    return bytes.fromhex(f"{n:016x}")


T0 = 1_767_225_600_123_456_789  # 2026-01-01T00:00:00.123456789Z


def flag_event(t, key=None, variant=None, context=None, name="feature_flag.evaluation", extra=None):
    a = []
    if key is not None:
        a.append(("feature_flag.key", key))
    if variant is not None:
        a.append(("feature_flag.result.variant" if name == "feature_flag.evaluation" else "feature_flag.variant", variant))
    if context is not None:
        a.append(("feature_flag.context.id", context))
    a.append(("feature_flag.provider.name", "flagd"))
    a += list((extra or {}).items())
    return Span.Event(time_unix_nano=t, name=name, attributes=attrs(a))


def exception_event(t, typ=None, escaped=None, message="boom"):
    a = {"exception.message": message, "exception.stacktrace": "at main()\n  at run()"}
    if typ is not None:
        a["exception.type"] = typ
    if escaped is not None:
        a["exception.escaped"] = escaped
    return Span.Event(time_unix_nano=t, name="exception", attributes=attrs(a))


def span(n, name, start, dur_ns, attributes=(), events=(), status=None, **kw):
    s = Span(
        trace_id=tid(0x4BF92F3577B34DA6A3CE929D0E0E0000 + n),
        span_id=sid(0x00F067AA0BA90000 + n),
        parent_span_id=sid(0x1000 + n),
        trace_state="congo=t61rcWkgMzE",
        flags=0x301,
        name=name,
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=start,
        end_time_unix_nano=start + dur_ns,
        attributes=attrs(attributes),
        events=list(events),
        dropped_attributes_count=1,
        links=[Span.Link(trace_id=tid(77), span_id=sid(78), attributes=attrs({"link.kind": "follows"}))],
    )
    if status is not None:
        s.status.CopyFrom(status)
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def err(message=""):
    return Status(code=Status.STATUS_CODE_ERROR, message=message)


def scope(name):
    return InstrumentationScope(name=name, version="1.0.0", attributes=attrs({"scope.attr": 1}))


def traces_checkout():
    """Three resources, several scopes; spans with and without flags; errors."""
    req = ExportTraceServiceRequest()

    # Resource 0: checkout.
    rs = req.resource_spans.add()
    rs.schema_url = "https://opentelemetry.io/schemas/1.30.0"
    rs.resource.CopyFrom(with_unknown(Resource(attributes=attrs({
        "service.name": "checkout",
        "service.version": "1.4.2",
        "deployment.environment": "prod",
        "host.cpu.count": 8,
        "process.runtime.jit": True,
        "sample.ratio": 0.25,
        "process.command_args": ["checkout", "--port", "8080"],
        "k8s.labels": {"app": "checkout"},
        "build.digest": b"\x01\x02",
        "user.id": "resource-user",
    }), entity_refs=[EntityRef(type="service", id_keys=["service.name"])])))
    ss = rs.scope_spans.add(scope=scope("checkout.http"))
    # A: one evaluation, OK status, attribute override, an unrelated event.
    a = span(1, "POST /checkout", T0, 250_000_001, attributes=[
        ("http.request.method", "POST"),
        ("http.response.status_code", 200),
        ("cart.items", 3),
        ("cart.value", 129.99),
        ("coupon", False),
        ("deployment.environment", "canary"),
        ("tags", ["a", "b"]),
    ], events=[
        Span.Event(time_unix_nano=T0 + 1000, name="cache.miss", attributes=attrs({"feature_flag.key": "not-an-evaluation"})),
        flag_event(T0 + 2_500_000, "new-checkout", "treatment", "user-42"),
    ], status=Status(code=Status.STATUS_CODE_OK))
    ss.spans.append(with_unknown(a))
    # B: no flags (error with an exception): skipped.
    ss.spans.append(span(2, "GET /health", T0 + 10**9, 1_000_000, attributes={"http.response.status_code": 500},
                         events=[exception_event(T0 + 10**9 + 5, "IOError")], status=err("down")))
    # C: three evaluations (the third repeats a key: ignored), error + exception.
    ss.spans.append(span(3, "POST /checkout/pay", T0 + 2 * 10**9, 1_999_999_999, attributes={
        "http.response.status_code": 502, "enduser.id": "enduser-3"}, events=[
        flag_event(T0 + 2 * 10**9 + 10, "new-checkout", "treatment", "user-7"),
        flag_event(T0 + 2 * 10**9 + 20, "fast-search", "v2", "user-7-other"),
        flag_event(T0 + 2 * 10**9 + 30, "new-checkout", "control", "user-8"),
        exception_event(T0 + 2 * 10**9 + 1_500_000_000, "PaymentDeclined", escaped=True),
    ], status=err("payment declined")))

    ss2 = rs.scope_spans.add(scope=scope("checkout.db"))
    # D: flag from span attributes only; error without exception, empty message.
    ss2.spans.append(span(4, "SELECT orders", T0 + 3 * 10**9, 42_000_000, attributes={
        "feature_flag.key": "db-pool", "feature_flag.result.variant": "large",
        "enduser.id": "user-99", "http.status_code": 503, "db.rows": 12}, status=err("")))
    # E: evaluation event with time 0 (-> span start), no context id (-> resource user.id);
    # error with a message and no exception; span-attribute flag repeating the event's key.
    ss2.spans.append(span(5, "UPDATE stock", T0 + 4 * 10**9, 7_654_321, attributes={
        "feature_flag.key": "db-pool", "feature_flag.result.variant": "small"},
        events=[flag_event(0, "db-pool", "xl")], status=err("deadline exceeded")))

    # Resource 1: unicode service, older conventions, scalar formatting.
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(attrs({"service.name": "search-ранжирование 🔎", "région": "eu-west-3 ✓"}))
    ss = rs.scope_spans.add(scope=scope("search"))
    # F: older `feature_flag` event with `feature_flag.variant`; odd doubles and ints;
    # escapes; exception without type, not escaped; status code as a string (ignored).
    f = span(6, "поиск 検索 🔍", T0 + 5 * 10**9, 123_456_789, attributes=[
        ("d.tenth", 0.1),
        ("d.big", 1e21),
        ("d.bigger", 1.5e300),
        ("d.small", 1e-7),
        ("d.tiny", 5e-324),
        ("d.negzero", -0.0),
        ("d.nan", float("nan")),
        ("d.inf", float("inf")),
        ("d.neginf", float("-inf")),
        ("d.two", 2.0),
        ("d.third", 1 / 3),
        ("i.min", -(2**63)),
        ("i.max", 2**63 - 1),
        ("i.neg", -42),
        ("s.escapes", 'quote" backslash\\ newline\n tab\t ctrl\x01 slash/'),
        ("s.empty", ""),
        ("http.response.status_code", "500"),
        ("http.status_code", 500),
        ("empty.value", AnyValue()),
    ], events=[
        flag_event(T0 + 5 * 10**9 + 1, "ranking-model", "on", "ütilisateur-ß", name="feature_flag"),
        exception_event(T0 + 5 * 10**9 + 2, None, escaped=False),
    ], status=Status(code=Status.STATUS_CODE_OK, message="fine"))
    ss.spans.append(f)
    # G: variants from feature_flag.result.value (bool, int, double); int context id.
    ss.spans.append(span(7, "rank", T0 + 6 * 10**9, 3_000_000, events=[
        Span.Event(time_unix_nano=T0 + 6 * 10**9 + 1, name="feature_flag.evaluation", attributes=attrs({
            "feature_flag.key": "bool-flag", "feature_flag.result.value": True, "feature_flag.context.id": 12345})),
        Span.Event(time_unix_nano=T0 + 6 * 10**9 + 2, name="feature_flag.evaluation", attributes=attrs({
            "feature_flag.key": "int-flag", "feature_flag.result.value": 3})),
        Span.Event(time_unix_nano=T0 + 6 * 10**9 + 3, name="feature_flag.evaluation", attributes=attrs({
            "feature_flag.key": "double-flag", "feature_flag.result.value": 0.5,
            "feature_flag.result.variant": ""})),
    ]))
    # H: evaluations without a variant, or without a key, or with an array variant: skipped.
    ss.spans.append(span(8, "suggest", T0 + 7 * 10**9, 1_000, events=[
        flag_event(T0 + 7 * 10**9, "no-variant"),
        flag_event(T0 + 7 * 10**9, None, "orphan-variant"),
        Span.Event(time_unix_nano=T0 + 7 * 10**9, name="feature_flag.evaluation", attributes=attrs({
            "feature_flag.key": "array-variant", "feature_flag.result.variant": ["a"]})),
    ], status=err("x")))
    # I: end before start (no latency); exception at time 0 (-> span end); status code out
    # of i32 range; a repeated span attribute key (last wins, first position).
    i = span(9, "broken-clock", T0 + 8 * 10**9, 0, attributes=[
        ("dup", "first"), ("http.response.status_code", 70_000_000_000), ("dup", "second")],
        events=[flag_event(T0 + 8 * 10**9 + 7, "clock", "skewed"),
                exception_event(0, "ClockError"), exception_event(T0 + 8 * 10**9 + 9, "")])
    i.end_time_unix_nano = T0 + 8 * 10**9 - 1_000_001
    ss.spans.append(i)

    # Resource 2: no resource at all; a span whose flag is only in span attributes using
    # the older variant attribute, with an exception (status unset).
    rs = req.resource_spans.add()
    ss = rs.scope_spans.add()
    ss.spans.append(span(10, "", T0 + 9 * 10**9, 5_000_000, attributes={
        "feature_flag.key": "anon", "feature_flag.variant": "b"},
        events=[exception_event(T0 + 9 * 10**9 + 1, "Panic", escaped=True)]))
    # A ScopeSpans with no spans, and a ResourceSpans with no scopes.
    rs.scope_spans.add(scope=scope("empty"))
    req.resource_spans.add().resource.attributes.extend(attrs({"service.name": "idle"}))
    return with_unknown(req)


def traces_bulk():
    """A realistic batch: 50 spans of 5 services, as an SDK exports them."""
    rnd = random.Random(20260101)
    req = ExportTraceServiceRequest()
    services = ["checkout", "cart", "search", "payments", "frontend"]
    n = 0
    for si, svc in enumerate(services):
        rs = req.resource_spans.add()
        rs.resource.attributes.extend(attrs({
            "service.name": svc,
            "service.version": f"2.{si}.0",
            "service.instance.id": f"{svc}-7d9f8b6c5-{si}x2lq",
            "deployment.environment.name": "production",
            "host.name": f"ip-10-0-{si}-17.eu-west-1.compute.internal",
            "host.arch": "amd64",
            "os.type": "linux",
            "process.pid": 4000 + si,
            "process.runtime.name": "rustc",
            "telemetry.sdk.name": "opentelemetry",
            "telemetry.sdk.language": "rust",
            "telemetry.sdk.version": "0.31.0",
        }))
        ss = rs.scope_spans.add(scope=InstrumentationScope(name="opentelemetry-http", version="0.31.0"))
        for _ in range(10):
            n += 1
            user = f"user-{rnd.randrange(100000)}"
            start = T0 + n * 37_000_000
            dur = rnd.randrange(1_000_000, 900_000_000)
            route = rnd.choice(["/checkout", "/cart/items", "/search", "/pay", "/"])
            a = {
                "http.request.method": rnd.choice(["GET", "POST"]),
                "http.route": route,
                "url.path": route + f"/{rnd.randrange(1000)}",
                "url.scheme": "https",
                "server.address": f"{svc}.internal",
                "network.protocol.version": "1.1",
                "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64)",
                "client.address": f"10.1.{rnd.randrange(256)}.{rnd.randrange(256)}",
                "enduser.id": user,
            }
            error = rnd.random() < 0.2
            a["http.response.status_code"] = rnd.choice([500, 502, 503]) if error else 200
            events = []
            if rnd.random() < 0.8:
                events.append(flag_event(start + 1000, "new-checkout", rnd.choice(["control", "treatment"]), user))
                if rnd.random() < 0.3:
                    events.append(flag_event(start + 2000, "fast-search", rnd.choice(["off", "on"]), user))
            if error and rnd.random() < 0.6:
                events.append(exception_event(start + dur - 10, rnd.choice(["TimeoutError", "ConnectionReset"]),
                                              escaped=rnd.random() < 0.5))
            s = Span(
                trace_id=rnd.randbytes(16), span_id=rnd.randbytes(8), parent_span_id=rnd.randbytes(8),
                flags=0x301, name=f"{a['http.request.method']} {route}", kind=Span.SPAN_KIND_SERVER,
                start_time_unix_nano=start, end_time_unix_nano=start + dur, attributes=attrs(a), events=events,
            )
            if error:
                s.status.CopyFrom(err(rnd.choice(["", "upstream failed"])))
            ss.spans.append(s)
    return req


def traces_empty():
    return ExportTraceServiceRequest()


def logs_flags():
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.extend(attrs({"service.name": "flags-sdk", "service.namespace": "shop", "build": 17}))
    sl = rl.scope_logs.add(scope=scope("openfeature"))
    ids = dict(trace_id=tid(0xABCDEF), span_id=sid(0x1234))
    recs = [
        # 0: evaluation with ids and event.name attribute.
        LogRecord(time_unix_nano=T0 + 1, observed_time_unix_nano=T0 + 99, severity_number=9, severity_text="INFO",
                  body=AnyValue(string_value="flag evaluated"), attributes=attrs({
                      "event.name": "feature_flag.evaluation", "feature_flag.key": "new-checkout",
                      "feature_flag.result.variant": "treatment", "feature_flag.context.id": "user-42",
                      "feature_flag.result.reason": "TARGETING_MATCH"}), event_name="ignored-field", **ids),
        # 1: no ids; event_name field; older variant attribute; unit from enduser.id.
        LogRecord(time_unix_nano=T0 + 2_000_000, severity_number=10, attributes=attrs({
            "feature_flag.key": "fast-search", "feature_flag.variant": "on", "enduser.id": "user-7"}),
            event_name="checkout.flag_evaluated"),
        # 2: a plain log: skipped.
        LogRecord(time_unix_nano=T0 + 3_000_000, severity_number=9, body=AnyValue(string_value="hello")),
        # 3: error by severity, with exception.type and an http status.
        LogRecord(time_unix_nano=T0 + 4_000_000, severity_number=17, attributes=attrs({
            "feature_flag.key": "new-checkout", "feature_flag.result.variant": "control",
            "exception.type": "TimeoutError", "http.response.status_code": 504, "user.id": "u-3"}), **ids),
        # 4: WARN with exception.type (error), escaped.
        LogRecord(time_unix_nano=T0 + 5_000_000, severity_number=13, attributes=attrs({
            "feature_flag.key": "new-checkout", "feature_flag.result.variant": "treatment",
            "exception.type": "ValueError", "exception.escaped": True})),
        # 5: FATAL, no exception.type; time 0 -> observed time.
        LogRecord(time_unix_nano=0, observed_time_unix_nano=T0 + 6_000_000, severity_number=21, attributes=attrs({
            "feature_flag.key": "new-checkout", "feature_flag.result.variant": "treatment"})),
        # 6: key without variant: skipped.
        LogRecord(time_unix_nano=T0 + 7_000_000, attributes=attrs({"feature_flag.key": "lonely"})),
        # 7: result.value as variant; event.name attribute beats event_name field.
        LogRecord(time_unix_nano=T0 + 8_000_000, attributes=attrs({
            "feature_flag.key": "limit", "feature_flag.result.value": 42, "event.name": "limits.evaluated",
            "ratio": 0.75, "ok": True}), event_name="not-used"),
    ]
    recs[0] = with_unknown(recs[0])
    sl.log_records.extend(recs)
    # Resource 1: no service.name; all-zero ids; two scopes.
    rl = req.resource_logs.add()
    rl.resource.attributes.extend(attrs({"host.name": "batch-1", "enduser.id": "res-user"}))
    sl = rl.scope_logs.add()
    sl.log_records.append(LogRecord(time_unix_nano=T0 + 9_000_000, severity_number=18,
                                    trace_id=bytes(16), span_id=bytes(8), attributes=attrs({
                                        "feature_flag.key": "batch", "feature_flag.result.variant": "fast"})))
    sl = rl.scope_logs.add(scope=scope("second"))
    sl.log_records.append(LogRecord(time_unix_nano=T0 + 10_000_000, attributes=attrs({"x": 1})))
    sl.log_records.append(LogRecord(time_unix_nano=T0 + 11_000_000, trace_id=tid(5), attributes=attrs({
        "feature_flag.key": "batch", "feature_flag.result.variant": "slow", "ünï": "çødé ✓"})))
    return with_unknown(req)


# --------------------------------------------------------------------------------------
# The reference mapping (independent of the Rust code; see src/ingest/otlp.rs docs).


def rust_f64(x):
    """Rust's `format!("{}", x)` for an f64: shortest round-trip digits, no exponent."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    s = format(Decimal(repr(x)), "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def scalar(v):
    which = v.WhichOneof("value")
    if which == "string_value":
        return v.string_value
    if which == "int_value":
        return str(v.int_value)
    if which == "bool_value":
        return "true" if v.bool_value else "false"
    if which == "double_value":
        return rust_f64(v.double_value)
    return None


def last(kvs, key):
    found = None
    for kv in kvs:
        if kv.key == key:
            found = kv.value
    return found


def text(kvs, key):
    v = last(kvs, key)
    s = scalar(v) if v is not None else None
    return s or None


def merged(*lists):
    d = {}
    for kvs in lists:
        for kv in kvs:
            s = scalar(kv.value)
            if s is not None:
                d[kv.key] = s
    return d


def evaluation(kvs, time):
    key = text(kvs, "feature_flag.key")
    variant = (text(kvs, "feature_flag.result.variant") or text(kvs, "feature_flag.variant")
               or text(kvs, "feature_flag.result.value"))
    if not key or not variant:
        return None
    return {"key": key, "variant": variant, "time": time, "context": text(kvs, "feature_flag.context.id")}


def http_status(kvs):
    for key in ("http.response.status_code", "http.status_code"):
        v = last(kvs, key)
        if v is not None and v.WhichOneof("value") == "int_value" and -(2**31) <= v.int_value < 2**31:
            return v.int_value
    return None


def unit_of(evals, attributes):
    for e in evals:
        if e["context"]:
            return e["context"]
    return attributes.get("enduser.id") or attributes.get("user.id") or None


def service_of(resource_attrs):
    return resource_attrs.get("service.name") or "unknown_service"


def event(event_id, ts_ns, flags, attributes, unit, body):
    return {
        "event_id": event_id,
        "timestamp": ts_ns // 1_000_000,
        "flags": [[f["key"], f["variant"]] for f in flags],
        "attributes": [[k, v] for k, v in attributes.items()],
        "user_id": unit,
        "body": body,
    }


def product(journey, outcome, latency):
    return {"kind": "product", "journey": journey, "step": None, "outcome": outcome,
            "latency_ms": latency, "value": None}


def error(service, error_class, status_code, fatal, latency):
    return {"kind": "error", "service": service, "error_class": error_class, "status_code": status_code,
            "fatal": fatal, "latency_ms": latency}


def map_traces(req):
    events, total, skipped = [], 0, 0
    for rs in req.resource_spans:
        res = merged(rs.resource.attributes)
        service = service_of(res)
        for ss in rs.scope_spans:
            for sp in ss.spans:
                total += 1
                evals = []
                for ev in sp.events:
                    if ev.name in ("feature_flag.evaluation", "feature_flag"):
                        e = evaluation(ev.attributes, ev.time_unix_nano or sp.start_time_unix_nano)
                        if e and all(x["key"] != e["key"] for x in evals):
                            evals.append(e)
                e = evaluation(sp.attributes, sp.start_time_unix_nano)
                if e and all(x["key"] != e["key"] for x in evals):
                    evals.append(e)
                if not evals:
                    skipped += 1
                    continue
                attributes = merged(rs.resource.attributes, sp.attributes)
                unit = unit_of(evals, attributes)
                base = sp.trace_id.hex() + sp.span_id.hex()
                start, end = sp.start_time_unix_nano, sp.end_time_unix_nano
                latency = (end - start) / 1e6 if end >= start else None
                failed = sp.status.code == Status.STATUS_CODE_ERROR
                events.append(event(base + ":exposure", evals[0]["time"], evals, attributes, unit,
                                    product(sp.name, "EXPOSURE", None)))
                events.append(event(base, end, evals, attributes, unit,
                                    product(sp.name, "FAILED" if failed else "COMPLETED", latency)))
                status = http_status(sp.attributes)
                exceptions = [ev for ev in sp.events if ev.name == "exception"]
                for n, ev in enumerate(exceptions):
                    escaped = last(ev.attributes, "exception.escaped")
                    fatal = escaped is not None and escaped.WhichOneof("value") == "bool_value" and escaped.bool_value
                    events.append(event(f"{base}:error:{n}", ev.time_unix_nano or end, evals, attributes, unit,
                                        error(service, text(ev.attributes, "exception.type") or "exception",
                                              status, fatal, latency)))
                if failed and not exceptions:
                    events.append(event(f"{base}:error:0", end, evals, attributes, unit,
                                        error(service, sp.status.message or "ERROR", status, False, latency)))
    return events, total, skipped


def map_logs(req):
    events, total, skipped = [], 0, 0
    for ri, rl in enumerate(req.resource_logs):
        res = merged(rl.resource.attributes)
        service = service_of(res)
        for si, sl in enumerate(rl.scope_logs):
            for li, lr in enumerate(sl.log_records):
                total += 1
                e = evaluation(lr.attributes, 0)
                if not e:
                    skipped += 1
                    continue
                attributes = merged(rl.resource.attributes, lr.attributes)
                unit = unit_of([e], attributes)
                ts = lr.time_unix_nano or lr.observed_time_unix_nano
                has_ids = any(lr.trace_id) and any(lr.span_id)
                eid = f"{lr.trace_id.hex()}{lr.span_id.hex()}:log:{li}" if has_ids else f"log:{ri}.{si}.{li}"
                exc = text(lr.attributes, "exception.type")
                if lr.severity_number >= 17 or exc:
                    escaped = last(lr.attributes, "exception.escaped")
                    fatal = lr.severity_number >= 21 or (
                        escaped is not None and escaped.WhichOneof("value") == "bool_value" and escaped.bool_value)
                    body = error(service, exc or "log_error", http_status(lr.attributes), fatal, None)
                else:
                    journey = text(lr.attributes, "event.name") or lr.event_name or "feature_flag.evaluation"
                    body = product(journey, "EXPOSURE", None)
                events.append(event(eid, ts, [e], attributes, unit, body))
    return events, total, skipped


# --------------------------------------------------------------------------------------
# Encodings.

ID_KEYS = {"traceId", "spanId", "parentSpanId"}


def ids_to_hex(node):
    if isinstance(node, dict):
        return {k: (base64.b64decode(v).hex() if k in ID_KEYS else ids_to_hex(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [ids_to_hex(x) for x in node]
    return node


def ids_to_base64(node):
    if isinstance(node, dict):
        return {k: (base64.b64encode(bytes.fromhex(v)).decode() if k in ID_KEYS else ids_to_base64(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [ids_to_base64(x) for x in node]
    return node


def otlp_json(msg):
    d = ids_to_hex(json_format.MessageToDict(msg, use_integers_for_enums=True))
    back = type(msg)()
    json_format.ParseDict(ids_to_base64(d), back)
    plain = type(msg)()
    plain.CopyFrom(msg)
    plain.DiscardUnknownFields()
    assert back == plain, "OTLP/JSON does not parse back to the request"
    # NaN/Infinity are strings already (proto3 JSON); allow_nan=False proves it.
    return (json.dumps(d, ensure_ascii=False, separators=(",", ":"), allow_nan=False),
            json.dumps(d, ensure_ascii=True, separators=(",", ":"), allow_nan=False))


def boundaries(buf):
    """Offsets where the top-level message may be cut (every field is length-delimited)."""
    out, pos = [0], 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        wt = key & 7
        if wt == 2:
            n, pos = read_varint(buf, pos)
            pos += n
        elif wt == 0:
            _, pos = read_varint(buf, pos)
        elif wt == 1:
            pos += 8
        elif wt == 5:
            pos += 4
        elif wt == 3:
            depth = 1
            while depth:
                k, pos = read_varint(buf, pos)
                if k & 7 == 3:
                    depth += 1
                elif k & 7 == 4:
                    depth -= 1
                elif k & 7 == 0:
                    _, pos = read_varint(buf, pos)
                elif k & 7 == 2:
                    n, pos = read_varint(buf, pos)
                    pos += n
                elif k & 7 == 1:
                    pos += 8
                elif k & 7 == 5:
                    pos += 4
        out.append(pos)
    assert pos == len(buf)
    return out


def read_varint(buf, pos):
    v = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return v, pos


def vector(name, signal, msg, description):
    raw = msg.SerializeToString()
    parsed = type(msg)()
    parsed.ParseFromString(raw)
    events, total, skipped = (map_traces if signal == "traces" else map_logs)(parsed)
    utf8, ascii_ = otlp_json(parsed)
    v = {
        "name": name,
        "description": description,
        "signal": signal,
        "protobuf_hex": raw.hex(),
        "protobuf_boundaries": boundaries(raw),
        "otlp_json": utf8,
    }
    if ascii_ != utf8:
        v["otlp_json_ascii"] = ascii_
    v.update({"total": total, "skipped": skipped, "events": events})
    return v


def dump(doc):
    """Indented down to one line per event, so that diffs stay readable."""
    def j(x):
        return json.dumps(x, ensure_ascii=False, separators=(",", ":"), allow_nan=False)

    lines = ["{"]
    for k in ("generator", "opentelemetry_proto_version", "protobuf_version"):
        lines.append(f" {j(k)}: {j(doc[k])},")
    lines.append(' "requests": [')
    for ri, r in enumerate(doc["requests"]):
        lines.append("  {")
        keys = list(r)
        for k in keys:
            if k == "events":
                lines.append('   "events": [')
                lines += ["    " + j(e) + ("," if i + 1 < len(r[k]) else "") for i, e in enumerate(r[k])]
                lines.append("   ]" + ("," if k != keys[-1] else ""))
            else:
                lines.append(f"   {j(k)}: {j(r[k])}" + ("," if k != keys[-1] else ""))
        lines.append("  }" + ("," if ri + 1 < len(doc["requests"]) else ""))
    lines.append(" ]")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == doc
    return text


def main():
    import importlib.metadata as md

    got = md.version("opentelemetry-proto")
    if got != OTEL_PROTO_VERSION or google.protobuf.__version__ != PROTOBUF_VERSION:
        sys.exit(f"need opentelemetry-proto=={OTEL_PROTO_VERSION} protobuf=={PROTOBUF_VERSION}, "
                 f"have {got} / {google.protobuf.__version__}")
    doc = {
        "generator": "scripts/otlp_vectors.py",
        "opentelemetry_proto_version": OTEL_PROTO_VERSION,
        "protobuf_version": PROTOBUF_VERSION,
        "requests": [
            vector("traces_checkout", "traces", traces_checkout(),
                   "3 resources (one without a resource), 4 scopes; spans without flags, two evaluations, "
                   "span-attribute flags, older feature_flag event, errors with and without exception events, "
                   "scalar formatting, unicode, escapes, unknown fields"),
            vector("traces_bulk", "traces", traces_bulk(), "50 spans of 5 services, SDK-like attributes"),
            vector("traces_empty", "traces", traces_empty(), "no resource spans"),
            vector("logs_flags", "logs", logs_flags(),
                   "evaluation records, error records (severity, exception.type, FATAL), records without "
                   "flags, with and without ids, unknown fields"),
        ],
    }
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "tests", "data", "byo", "otlp.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(dump(doc))
    n = sum(len(r["events"]) for r in doc["requests"])
    print(f"wrote {path}: {len(doc['requests'])} requests, {n} events")


if __name__ == "__main__":
    main()
