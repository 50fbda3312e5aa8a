//! Parsing Canonical Form and the CRC-64-AVRO fingerprint, as the Avro specification
//! defines them ("Schema Resolution" → "Parsing Canonical Form for Schemas").
//!
//! apache-avro 0.22's `Schema::canonical_form()` keeps `{"type":"long"}` for a field
//! with a logical type where the specification (and Java's `SchemaNormalization`,
//! fastavro, the Python `avro` package, goavro) write `"long"`, so its fingerprints
//! differ from every other implementation's. This module works on the schema's JSON:
//!
//! - [PRIMITIVES] a primitive, with or without attributes, is written as its name;
//! - [FULLNAMES] names are replaced by full names (namespaces resolved the way the
//!   specification says: a dotted name is full, else the `namespace` attribute, else
//!   the enclosing named type's namespace);
//! - [STRIP] only `name`, `type`, `fields`, `symbols`, `items`, `values`, `size` are kept
//!   (`logicalType`, `doc`, `aliases`, `default`, `order`, `namespace` … go);
//! - [ORDER] attributes in that order; [WHITESPACE] none;
//! - [STRINGS]/[INTEGERS] strings written without escapes where none are needed and
//!   integers as plain decimals (serde_json's writer does both);
//! - a named type is defined once, at its first occurrence; later occurrences are its
//!   full name as a string (Java's `SchemaNormalization`, the reference).
//!
//! Checked in `cargo test` against fingerprints that Java's `SchemaNormalization`,
//! fastavro and the Python `avro` package compute (`tests/data/avro_fingerprints.json`,
//! written by `scripts/avro_fingerprints.py`).

use std::collections::HashSet;

use serde_json::Value;

/// The empty CRC-64-AVRO fingerprint (the polynomial's seed).
const EMPTY: u64 = 0xc15d_213a_a4d7_a795;

const TABLE: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut fp = i as u64;
        let mut j = 0;
        while j < 8 {
            fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
            j += 1;
        }
        table[i] = fp;
        i += 1;
    }
    table
};

/// CRC-64-AVRO (the 64-bit Rabin fingerprint of the specification) of `bytes`. Single-
/// object encoding writes it little-endian.
pub fn crc64_avro(bytes: &[u8]) -> u64 {
    let mut fp = EMPTY;
    for &b in bytes {
        fp = (fp >> 8) ^ TABLE[((fp ^ u64::from(b)) & 0xff) as usize];
    }
    fp
}

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The Parsing Canonical Form of a schema given as JSON text.
pub fn parsing_canonical_form_str(text: &str) -> Result<String, String> {
    let json: Value = serde_json::from_str(text).map_err(|e| format!("schema JSON: {e}"))?;
    parsing_canonical_form(&json)
}

/// The Parsing Canonical Form of a schema given as parsed JSON.
pub fn parsing_canonical_form(schema: &Value) -> Result<String, String> {
    let mut pcf = Canonical {
        out: String::with_capacity(256),
        defined: HashSet::new(),
    };
    pcf.schema(schema, "")?;
    Ok(pcf.out)
}

/// The standard fingerprint: CRC-64-AVRO of the Parsing Canonical Form.
pub fn fingerprint_str(text: &str) -> Result<u64, String> {
    Ok(crc64_avro(parsing_canonical_form_str(text)?.as_bytes()))
}

/// The standard fingerprint of a parsed schema.
pub fn fingerprint_json(schema: &Value) -> Result<u64, String> {
    Ok(crc64_avro(parsing_canonical_form(schema)?.as_bytes()))
}

struct Canonical {
    out: String,
    /// Full names of the named types written so far.
    defined: HashSet<String>,
}

impl Canonical {
    fn schema(&mut self, s: &Value, ns: &str) -> Result<(), String> {
        match s {
            Value::String(name) => {
                if PRIMITIVES.contains(&name.as_str()) {
                    self.string(name);
                } else {
                    let full = self.reference(name, ns);
                    self.string(&full);
                }
                Ok(())
            }
            Value::Array(branches) => {
                self.out.push('[');
                for (i, b) in branches.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.schema(b, ns)?;
                }
                self.out.push(']');
                Ok(())
            }
            Value::Object(o) => {
                let ty = match o.get("type") {
                    Some(Value::String(t)) => t.as_str(),
                    // {"type": {...}} or {"type": [...]}: the attribute is the schema.
                    Some(inner @ (Value::Object(_) | Value::Array(_))) => {
                        return self.schema(inner, ns);
                    }
                    _ => return Err(format!("schema object without a \"type\": {s}")),
                };
                match ty {
                    _ if PRIMITIVES.contains(&ty) => {
                        self.string(ty);
                        Ok(())
                    }
                    "array" => {
                        self.out.push_str(r#"{"type":"array","items":"#);
                        self.schema(o.get("items").ok_or("array without \"items\"")?, ns)?;
                        self.out.push('}');
                        Ok(())
                    }
                    "map" => {
                        self.out.push_str(r#"{"type":"map","values":"#);
                        self.schema(o.get("values").ok_or("map without \"values\"")?, ns)?;
                        self.out.push('}');
                        Ok(())
                    }
                    "record" | "error" | "enum" | "fixed" => self.named(o, ty, ns),
                    // {"type": "SomeNamedType"}: a reference written as an object.
                    other => {
                        let full = self.reference(other, ns);
                        self.string(&full);
                        Ok(())
                    }
                }
            }
            other => Err(format!("not a schema: {other}")),
        }
    }

    fn named(
        &mut self,
        o: &serde_json::Map<String, Value>,
        ty: &str,
        ns: &str,
    ) -> Result<(), String> {
        let name = o
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{ty} without a \"name\""))?;
        let full = if name.contains('.') {
            name.to_string()
        } else {
            let space = match o.get("namespace") {
                Some(Value::String(n)) => n.as_str(),
                Some(Value::Null) => "",
                _ => ns,
            };
            qualify(space, name)
        };
        if !self.defined.insert(full.clone()) {
            // Already defined earlier in the document: a reference.
            self.string(&full);
            return Ok(());
        }
        let inner_ns = full
            .rsplit_once('.')
            .map_or("", |(space, _)| space)
            .to_string();
        self.out.push_str(r#"{"name":"#);
        self.string(&full);
        // An `error` is a record for parsing purposes (Java writes "record").
        let ty = if ty == "error" { "record" } else { ty };
        self.out.push_str(r#","type":"#);
        self.string(ty);
        match ty {
            "record" => {
                self.out.push_str(r#","fields":["#);
                let fields = o
                    .get("fields")
                    .and_then(Value::as_array)
                    .ok_or_else(|| format!("record {full} without \"fields\""))?;
                for (i, f) in fields.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    let fname = f
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| format!("a field of {full} has no \"name\""))?;
                    let ftype = f
                        .get("type")
                        .ok_or_else(|| format!("field {full}.{fname} has no \"type\""))?;
                    self.out.push_str(r#"{"name":"#);
                    self.string(fname);
                    self.out.push_str(r#","type":"#);
                    self.schema(ftype, &inner_ns)?;
                    self.out.push('}');
                }
                self.out.push(']');
            }
            "enum" => {
                self.out.push_str(r#","symbols":["#);
                let symbols = o
                    .get("symbols")
                    .and_then(Value::as_array)
                    .ok_or_else(|| format!("enum {full} without \"symbols\""))?;
                for (i, sym) in symbols.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    let sym = sym
                        .as_str()
                        .ok_or_else(|| format!("enum {full}: a symbol is not a string"))?;
                    self.string(sym);
                }
                self.out.push(']');
            }
            _ => {
                let size = o
                    .get("size")
                    .and_then(|v| match v {
                        Value::Number(n) => n.as_u64(),
                        Value::String(s) => s.trim().parse().ok(),
                        _ => None,
                    })
                    .ok_or_else(|| format!("fixed {full} without an integer \"size\""))?;
                self.out.push_str(r#","size":"#);
                self.out.push_str(&size.to_string());
            }
        }
        self.out.push('}');
        Ok(())
    }

    /// The full name a type reference stands for. A short name is looked up in the
    /// enclosing namespace first, then (as Java does) in the null namespace.
    fn reference(&self, name: &str, ns: &str) -> String {
        if name.contains('.') {
            return name.to_string();
        }
        let qualified = qualify(ns, name);
        if self.defined.contains(&qualified) || !self.defined.contains(name) {
            qualified
        } else {
            name.to_string()
        }
    }

    fn string(&mut self, s: &str) {
        // serde_json writes UTF-8 as is and escapes only what JSON requires.
        self.out
            .push_str(&serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\"")));
    }
}

fn qualify(ns: &str, name: &str) -> String {
    if ns.is_empty() {
        name.to_string()
    } else {
        format!("{ns}.{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors computed by Java's `SchemaNormalization` and fastavro
    /// (`scripts/avro_fingerprints.py`): every shipped schema and an edge-case corpus.
    #[test]
    fn canonical_forms_and_fingerprints_match_java_and_fastavro() {
        let doc: Value =
            serde_json::from_str(include_str!("../../tests/data/avro_fingerprints.json")).unwrap();
        let vectors = doc["vectors"].as_array().unwrap();
        assert!(vectors.len() >= 19, "{} vectors", vectors.len());
        let mut shipped = 0;
        for v in vectors {
            let name = v["name"].as_str().unwrap();
            let expected_fp = u64::from_str_radix(v["fingerprint"].as_str().unwrap(), 16).unwrap();
            let expected_pcf = v["canonical"].as_str().unwrap();
            // From the JSON text, as a schema file or a container-file header holds it.
            let text = serde_json::to_string(&v["schema"]).unwrap();
            assert_eq!(
                parsing_canonical_form_str(&text).unwrap(),
                expected_pcf,
                "{name}"
            );
            assert_eq!(fingerprint_str(&text).unwrap(), expected_fp, "{name}");
            if let Some(file) = name.strip_prefix("schemas/") {
                // Through apache-avro's parsed Schema too (`decode::fingerprint`). Only for
                // our files: apache-avro re-serializes a nested type in the null namespace
                // without `"namespace": ""` (the corpus has one), which is why the
                // registry fingerprints the schema text, not the parsed Schema.
                let parsed = apache_avro::Schema::parse_str(&text).unwrap();
                assert_eq!(
                    crate::ingest::decode::fingerprint(&parsed).unwrap(),
                    expected_fp,
                    "{name} via apache_avro::Schema"
                );
                // The vectors cover the files as they are in the repository.
                let on_disk = std::fs::read_to_string(
                    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("schemas")
                        .join(file),
                )
                .unwrap();
                assert_eq!(
                    fingerprint_str(&on_disk).unwrap(),
                    expected_fp,
                    "{name} on disk"
                );
                shipped += 1;
            }
        }
        let avsc_in = |dir: &str| {
            std::fs::read_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "avsc")
                })
                .count()
        };
        let on_disk = avsc_in("schemas") + avsc_in("schemas/history");
        assert_eq!(shipped, on_disk, "a vector for every schema file");
    }

    #[test]
    fn crc64_avro_of_the_empty_string_is_the_seed() {
        assert_eq!(crc64_avro(b""), EMPTY);
    }

    #[test]
    fn logical_types_reduce_to_their_primitive() {
        let pcf = parsing_canonical_form_str(
            r#"{"type":"record","name":"R","namespace":"a.b","doc":"x","fields":[
                {"name":"t","type":{"type":"long","logicalType":"timestamp-millis"},"default":0},
                {"name":"d","type":{"type":"fixed","name":"D","size":"08","logicalType":"decimal","precision":4}},
                {"name":"again","type":"D"}]}"#,
        )
        .unwrap();
        assert_eq!(
            pcf,
            r#"{"name":"a.b.R","type":"record","fields":[{"name":"t","type":"long"},{"name":"d","type":{"name":"a.b.D","type":"fixed","size":8}},{"name":"again","type":"a.b.D"}]}"#
        );
    }
}
