#!/usr/bin/env python3
"""An independent guardrail client: fastavro + confluent-kafka, no guardrail code.

Used by tests/interop_python.rs to prove the wire format against implementations that
are not ours. It has its own traffic model (it does not share guardrail's simulator):
checkout sessions of persistent users, 20% of users in treatment by a hash of the user
id, four platforms, and on mobile-web the treatment's checkout error probability rising
from 2% to 12% from window `--regress-from` on.

  produce   events -> product-events / error-events, Avro single-object encoding framed
            with fastavro's CRC-64-AVRO fingerprint of schemas/*.avsc (what Java's
            BinaryMessageEncoder writes); prints {"product": n, "errors": n}
  write-ocf the same events as Avro object container files written by fastavro.writer
            (product: deflate codec, errors: null codec); prints the file paths
  consume   reads a topic to its end with a confluent-kafka consumer; checks each record's
            single-object header against fastavro's fingerprint of the schema file and
            decodes the datum with fastavro.schemaless_reader; prints one JSON line each
"""
import argparse
import hashlib
import io
import json
import os
import random
import sys

import fastavro
import fastavro.schema

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLATFORMS = ["ios", "android", "mobile-web", "desktop-web"]
FLAG = "checkout-redesign"
WINDOW_MS = 15 * 60 * 1000


def load(name):
    with open(os.path.join(ROOT, "schemas", name)) as f:
        return fastavro.parse_schema(json.load(f))


def header(schema):
    """C3 01 + the 8 fingerprint bytes as fastavro writes them (little-endian)."""
    pcf = fastavro.schema.to_parsing_canonical_form(schema)
    return b"\xc3\x01" + bytes.fromhex(fastavro.schema.fingerprint(pcf, "CRC-64-AVRO"))


def events(start, windows, sessions, regress_from, seed):
    """(source, record) in event-time order per window."""
    rng = random.Random(seed)
    users = [f"user-{i}" for i in range(sessions // 2)]  # about 2 sessions per user per window
    for w in range(windows):
        base = start + w * WINDOW_MS
        for s in range(sessions):
            user = rng.choice(users)
            digest = hashlib.sha256(f"{FLAG}:{user}".encode()).digest()
            variant = "on" if digest[0] < 0.2 * 256 else "off"
            platform = PLATFORMS[digest[1] % len(PLATFORMS)]
            t = base + int(rng.random() * (WINDOW_MS - 60_000))
            common = {
                "flags": [{"key": FLAG, "variant": variant}],
                "attributes": {"platform": platform, "region": "eu"},
                "user_id": user,
            }

            def product(outcome, dt, latency=None):
                return ("product", dict(common, event_id=f"p-{w}-{s}-{outcome}", timestamp=t + dt,
                                        journey="checkout", step=None, outcome=outcome,
                                        latency_ms=latency, value=None))

            yield product("EXPOSURE", 0)
            yield product("STARTED", 1)
            p_error = 0.02
            if variant == "on" and platform == "mobile-web" and w >= regress_from:
                p_error = 0.12
            if rng.random() < p_error:
                yield ("errors", dict(common, event_id=f"e-{w}-{s}", timestamp=t + 2,
                                      service="checkout", error_class="PaymentTimeout",
                                      status_code=504, fatal=False, latency_ms=None))
                yield product("ABANDONED", 3, 2000.0 + rng.random() * 500)
            else:
                yield product("COMPLETED", 3, 300.0 + rng.expovariate(1 / 200.0))


def produce(args):
    from confluent_kafka import Producer

    schemas = {"product": load("product_event.avsc"), "errors": load("error_event.avsc")}
    topics = {"product": args.product_topic, "errors": args.error_topic}
    headers = {k: header(v) for k, v in schemas.items()}
    producer = Producer({"bootstrap.servers": args.brokers, "linger.ms": 20,
                         "enable.idempotence": True, "queue.buffering.max.messages": 1_000_000})
    counts = {"product": 0, "errors": 0}
    failed = []

    def delivered(err, _msg):
        if err is not None:
            failed.append(str(err))

    for source, record in events(args.start, args.windows, args.sessions, args.regress_from, args.seed):
        buf = io.BytesIO()
        buf.write(headers[source])
        fastavro.schemaless_writer(buf, schemas[source], record)
        while True:
            try:
                producer.produce(topics[source], key=record["user_id"].encode(), value=buf.getvalue(),
                                 on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        counts[source] += 1
    remaining = producer.flush(60)
    if remaining or failed:
        sys.exit(f"produce failed: {remaining} undelivered, errors {failed[:3]}")
    print(json.dumps(counts))


def write_ocf(args):
    schemas = {"product": load("product_event.avsc"), "errors": load("error_event.avsc")}
    records = {"product": [], "errors": []}
    for source, record in events(args.start, args.windows, args.sessions, args.regress_from, args.seed):
        records[source].append(record)
    paths = {}
    for source, codec in [("product", "deflate"), ("errors", "null")]:
        path = os.path.join(args.dir, f"{source}.avro")
        with open(path, "wb") as f:
            fastavro.writer(f, schemas[source], records[source], codec=codec)
        paths[source] = path
    print(json.dumps({"paths": paths, "counts": {k: len(v) for k, v in records.items()}}))


def consume(args):
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    schema = load(args.schema)
    expected = header(schema)
    # read_committed, as a flag platform reads flag-commands; the end of a partition is
    # its EOF event (under exactly-once the last offsets are transaction markers).
    consumer = Consumer({"bootstrap.servers": args.brokers, "group.id": "python-interop",
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "enable.partition.eof": True})
    parts = consumer.list_topics(args.topic, timeout=10).topics[args.topic].partitions
    ends = {}
    assign = []
    for p in parts:
        low, high = consumer.get_watermark_offsets(TopicPartition(args.topic, p), timeout=10)
        if high > low:
            ends[p] = high
            assign.append(TopicPartition(args.topic, p, low))
    consumer.assign(assign)
    out = []
    while ends:
        msg = consumer.poll(10)
        if msg is None:
            sys.exit(f"timed out reading {args.topic}; still waiting for partitions {sorted(ends)}")
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                ends.pop(msg.partition(), None)
                continue
            sys.exit(f"consumer error: {msg.error()}")
        value = msg.value()
        if value[:10] != expected:
            sys.exit(f"{args.topic}@{msg.partition()}:{msg.offset()}: header {value[:10].hex()} "
                     f"is not the single-object header of {args.schema} ({expected.hex()})")
        record = fastavro.schemaless_reader(io.BytesIO(value[10:]), schema)
        out.append({"key": msg.key().decode(), "record": record})
    consumer.close()
    for o in out:
        print(json.dumps(o, default=epoch_ms))


def epoch_ms(value):
    """fastavro reads timestamp-millis as an aware datetime; print it as epoch millis."""
    return round(value.timestamp() * 1000)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("produce", "write-ocf"):
        p = sub.add_parser(name)
        p.add_argument("--start", type=int, required=True)
        p.add_argument("--windows", type=int, default=6)
        p.add_argument("--sessions", type=int, default=6000)
        p.add_argument("--regress-from", type=int, default=2)
        p.add_argument("--seed", type=int, default=20261202)
        if name == "produce":
            p.add_argument("--brokers", required=True)
            p.add_argument("--product-topic", default="product-events")
            p.add_argument("--error-topic", default="error-events")
        else:
            p.add_argument("--dir", required=True)
    c = sub.add_parser("consume")
    c.add_argument("--brokers", required=True)
    c.add_argument("--topic", required=True)
    c.add_argument("--schema", required=True)
    args = ap.parse_args()
    {"produce": produce, "write-ocf": write_ocf, "consume": consume}[args.cmd](args)


if __name__ == "__main__":
    main()
