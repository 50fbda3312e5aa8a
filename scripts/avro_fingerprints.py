#!/usr/bin/env python3
"""Generate tests/data/avro_fingerprints.json: Parsing Canonical Forms and CRC-64-AVRO
fingerprints of every schema in schemas/ and of tests/data/avro_pcf_corpus.json, as
implementations that are not guardrail's compute them.

References (both must agree, or the script stops):
  java      Apache Avro's Java reference implementation,
            org.apache.avro.SchemaNormalization.toParsingForm / parsingFingerprint64
            (Debian's libavro-java; scripts/java/Fingerprints.java is compiled against it)
  fastavro  fastavro.schema.to_parsing_canonical_form / fingerprint("CRC-64-AVRO")

The Python `avro` package (1.12) is not used: like apache-avro for Rust it keeps
{"type":"long"} for a logical type, which the specification and Java reduce to "long".

Fingerprints are written as 16 hex digits of the unsigned 64-bit value (Java's long);
single-object encoding writes that value little-endian.

Run from the crate root (scripts/test-setup installs what it needs):
    python3 scripts/avro_fingerprints.py
"""
import glob
import json
import os
import subprocess
import sys
import tempfile

import fastavro
import fastavro.schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JARS = ["/usr/share/java/avro.jar", "/usr/share/java/jackson-core-asl.jar",
        "/usr/share/java/jackson-mapper-asl.jar", "/usr/share/java/slf4j-api.jar"]


def java_fingerprints(paths):
    """{path: (hex fingerprint, canonical form)} from the Java reference."""
    cp = ":".join(JARS)
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(["javac", "-d", out, "-cp", cp,
                        os.path.join(ROOT, "scripts/java/Fingerprints.java")], check=True)
        run = subprocess.run(["java", "-cp", out + ":" + cp, "Fingerprints", *paths],
                             check=True, capture_output=True, text=True)
    result = {}
    for line in run.stdout.splitlines():
        path, fp, pcf = line.split("\t", 2)
        result[path] = (fp.rjust(16, "0"), pcf)
    return result


def fastavro_fingerprint(schema):
    pcf = fastavro.schema.to_parsing_canonical_form(schema)
    # fastavro returns the bytes as single-object encoding writes them (little-endian).
    le = bytes.fromhex(fastavro.schema.fingerprint(pcf, "CRC-64-AVRO"))
    return int.from_bytes(le, "little").to_bytes(8, "big").hex(), pcf


def main():
    cases = []
    for path in sorted(glob.glob(os.path.join(ROOT, "schemas", "**", "*.avsc"), recursive=True)):
        with open(path) as f:
            cases.append((os.path.relpath(path, ROOT), json.load(f)))
    with open(os.path.join(ROOT, "tests/data/avro_pcf_corpus.json")) as f:
        for case in json.load(f):
            cases.append(("corpus: " + case["name"], case["schema"]))

    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, (_, schema) in enumerate(cases):
            p = os.path.join(tmp, f"{i}.avsc")
            with open(p, "w") as f:
                json.dump(schema, f)
            files.append(p)
        java = java_fingerprints(files)

    vectors = []
    for (name, schema), path in zip(cases, files):
        fa_fp, fa_pcf = fastavro_fingerprint(schema)
        j_fp, j_pcf = java[path]
        if j_fp.strip() == "ERROR":
            sys.exit(f"{name}: Java refused the schema: {j_pcf}")
        if (fa_fp, fa_pcf) != (j_fp, j_pcf):
            sys.exit(f"{name}: Java and fastavro disagree:\n  java     {j_fp} {j_pcf}\n"
                     f"  fastavro {fa_fp} {fa_pcf}")
        vectors.append({"name": name, "schema": schema, "canonical": j_pcf,
                        "fingerprint": j_fp, "references": ["java", "fastavro"]})

    out = os.path.join(ROOT, "tests/data/avro_fingerprints.json")
    with open(out, "w") as f:
        json.dump({
            "generated_by": "scripts/avro_fingerprints.py",
            "java": "Debian libavro-java (org.apache.avro.SchemaNormalization)",
            "fastavro": fastavro.__version__,
            "vectors": vectors,
        }, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {len(vectors)} vectors to {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
