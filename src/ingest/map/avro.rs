//! Avro binary data of any writer schema, projected onto a mapping's [`Trie`].
//!
//! The writer schema (from a Schema Registry, by id) is parsed once into [`AvroSchema`];
//! [`Plan::compile`] resolves the mapping's paths against it once per schema id — which
//! field of which record each path goes through, which union branches can lead there,
//! which paths this schema cannot provide — and the per-record work is then a walk that
//! skips every field no path needs and captures the rest with borrowed strings.

use std::collections::HashMap;

use serde_json::Value as Json;

use super::value::{Captures, ListCapture, Seg, Trie, Txt, Val};
use crate::ingest::decode::{Cursor, DecodeError};

/// The unit of an Avro `long` carrying a timestamp logical type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    Millis,
    Micros,
    Nanos,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Null,
    Bool,
    Int,
    Long(Option<TimeUnit>),
    Float,
    Double,
    Bytes,
    Str,
    Fixed(usize),
    Enum(Vec<String>),
    Array(usize),
    Map(usize),
    Union(Vec<usize>),
    Record {
        name: String,
        fields: Vec<(String, usize)>,
    },
}

/// A parsed writer schema: nodes in an arena (named types may refer to themselves).
#[derive(Debug, Clone)]
pub struct AvroSchema {
    nodes: Vec<Node>,
    root: usize,
}

impl AvroSchema {
    /// Parses Avro schema JSON (the text a registry returns).
    pub fn parse(text: &str) -> Result<AvroSchema, String> {
        let json: Json = serde_json::from_str(text).map_err(|e| format!("schema JSON: {e}"))?;
        let mut p = SchemaParser {
            nodes: Vec::new(),
            names: HashMap::new(),
        };
        let root = p.node(&json, None)?;
        Ok(AvroSchema {
            nodes: p.nodes,
            root,
        })
    }

    /// The full name of the top-level record (for messages), or its type.
    pub fn name(&self) -> String {
        match &self.nodes[self.root] {
            Node::Record { name, .. } => name.clone(),
            other => format!("{other:?}"),
        }
    }
}

struct SchemaParser {
    nodes: Vec<Node>,
    names: HashMap<String, usize>,
}

impl SchemaParser {
    fn push(&mut self, n: Node) -> usize {
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    fn full_name(name: &str, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if !ns.is_empty() && !name.contains('.') => format!("{ns}.{name}"),
            _ => name.to_string(),
        }
    }

    fn define(
        &mut self,
        o: &serde_json::Map<String, Json>,
        ns: Option<&str>,
        n: Node,
    ) -> Result<(usize, String, Option<String>), String> {
        let name = o
            .get("name")
            .and_then(Json::as_str)
            .ok_or("named type without a \"name\"")?;
        let own_ns = o.get("namespace").and_then(Json::as_str).or(ns);
        let full = Self::full_name(name, own_ns);
        let id = self.push(n);
        if self.names.insert(full.clone(), id).is_some() {
            return Err(format!("type {full} defined twice"));
        }
        // The namespace of the types defined inside: the full name's.
        let inner_ns = full.rsplit_once('.').map(|(ns, _)| ns.to_string());
        Ok((id, full, inner_ns))
    }

    fn node(&mut self, j: &Json, ns: Option<&str>) -> Result<usize, String> {
        match j {
            Json::String(s) => self.named(s, ns),
            Json::Array(branches) => {
                let ids = branches
                    .iter()
                    .map(|b| self.node(b, ns))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(self.push(Node::Union(ids)))
            }
            Json::Object(o) => {
                let ty = o.get("type").ok_or("schema object without \"type\"")?;
                let ty = match ty {
                    Json::String(s) => s.as_str(),
                    other => return self.node(other, ns),
                };
                let logical = o.get("logicalType").and_then(Json::as_str);
                match ty {
                    "record" | "error" => {
                        let placeholder = Node::Record {
                            name: String::new(),
                            fields: Vec::new(),
                        };
                        let (id, full, inner) = self.define(o, ns, placeholder)?;
                        let mut fields = Vec::new();
                        for f in o
                            .get("fields")
                            .and_then(Json::as_array)
                            .ok_or_else(|| format!("record {full} without \"fields\""))?
                        {
                            let fname = f
                                .get("name")
                                .and_then(Json::as_str)
                                .ok_or_else(|| format!("a field of {full} without a name"))?;
                            let ftype = f
                                .get("type")
                                .ok_or_else(|| format!("field {full}.{fname} without a type"))?;
                            let fid = self.node(ftype, inner.as_deref())?;
                            fields.push((fname.to_string(), fid));
                        }
                        self.nodes[id] = Node::Record { name: full, fields };
                        Ok(id)
                    }
                    "enum" => {
                        let symbols = o
                            .get("symbols")
                            .and_then(Json::as_array)
                            .ok_or("enum without \"symbols\"")?
                            .iter()
                            .map(|s| s.as_str().map(str::to_string).ok_or("enum symbol"))
                            .collect::<Result<Vec<_>, _>>()?;
                        Ok(self.define(o, ns, Node::Enum(symbols))?.0)
                    }
                    "fixed" => {
                        let size = o
                            .get("size")
                            .and_then(Json::as_u64)
                            .ok_or("fixed without \"size\"")?;
                        Ok(self.define(o, ns, Node::Fixed(size as usize))?.0)
                    }
                    "array" => {
                        let items = o.get("items").ok_or("array without \"items\"")?;
                        let items = self.node(items, ns)?;
                        Ok(self.push(Node::Array(items)))
                    }
                    "map" => {
                        let values = o.get("values").ok_or("map without \"values\"")?;
                        let values = self.node(values, ns)?;
                        Ok(self.push(Node::Map(values)))
                    }
                    "long" => {
                        let unit = match logical {
                            Some("timestamp-millis" | "local-timestamp-millis") => {
                                Some(TimeUnit::Millis)
                            }
                            Some("timestamp-micros" | "local-timestamp-micros") => {
                                Some(TimeUnit::Micros)
                            }
                            Some("timestamp-nanos" | "local-timestamp-nanos") => {
                                Some(TimeUnit::Nanos)
                            }
                            _ => None,
                        };
                        Ok(self.push(Node::Long(unit)))
                    }
                    other => self.named(other, ns),
                }
            }
            other => Err(format!("not a schema: {other}")),
        }
    }

    fn named(&mut self, s: &str, ns: Option<&str>) -> Result<usize, String> {
        let n = match s {
            "null" => Node::Null,
            "boolean" => Node::Bool,
            "int" => Node::Int,
            "long" => Node::Long(None),
            "float" => Node::Float,
            "double" => Node::Double,
            "bytes" => Node::Bytes,
            "string" => Node::Str,
            name => {
                return self
                    .names
                    .get(&Self::full_name(name, ns))
                    .or_else(|| self.names.get(name))
                    .copied()
                    .ok_or_else(|| format!("unknown type {name:?}"));
            }
        };
        Ok(self.push(n))
    }
}

/// How one schema node is read for one trie node.
#[derive(Debug, Clone)]
enum P {
    Skip(usize),
    Capture(usize, usize),
    /// One step per writer field, in order.
    Record(Vec<P>),
    Union(Vec<P>),
    Map {
        values: usize,
        keys: Vec<(String, P)>,
    },
    Array {
        items: usize,
        index: Vec<(usize, P)>,
    },
    /// A list capture over an array: each element read with `item` into two slots of
    /// its own, giving one pair.
    List {
        slot: u32,
        item: Box<P>,
    },
    /// A list capture over a map: one pair per entry.
    Entries {
        slot: u32,
        values: usize,
    },
    /// A list capture over a record: one pair per field.
    Fields {
        slot: u32,
        record: usize,
    },
    /// A list capture over a value that is no list: wrong unless it is null.
    Bad {
        slot: u32,
        node: usize,
    },
}

/// A mapping's paths resolved against one writer schema.
#[derive(Debug, Clone)]
pub struct Plan {
    schema: AvroSchema,
    root: P,
    /// Per slot: the timestamp unit of the long captured there, if the schema says.
    pub units: Vec<Option<TimeUnit>>,
    /// Per slot: whether some branch of the schema can provide the path.
    pub found: Vec<bool>,
}

impl Plan {
    /// Resolves `trie` (with `slots` captures) against `schema`.
    pub fn compile(schema: AvroSchema, trie: &Trie, slots: usize) -> Plan {
        let mut units = vec![None; slots];
        let mut found = vec![false; slots];
        let root = plan(&schema, schema.root, trie, &mut units, &mut found, 0);
        Plan {
            schema,
            root,
            units,
            found,
        }
    }

    /// Reads one datum (the whole of `datum`), filling the captures.
    pub fn decode<'a>(
        &'a self,
        datum: &'a [u8],
        caps: &mut Captures<'a>,
    ) -> Result<(), DecodeError> {
        let mut r = Cursor::new(datum);
        let mut out = Out {
            slots: &mut caps.slots,
            pairs: &mut caps.pairs,
            bad: &mut caps.bad,
        };
        run(&self.schema, &self.root, &mut r, &mut out, 0)?;
        if r.position() != datum.len() {
            return Err(DecodeError::Malformed("trailing bytes after the datum"));
        }
        Ok(())
    }
}

/// Deep enough for any real schema; a recursive schema's data is cut off here.
const MAX_DEPTH: usize = 64;

/// Where a datum is read to (the parts of [`Captures`], so that list elements can be
/// read into slots of their own).
struct Out<'o, 'a> {
    slots: &'o mut [Val<'a>],
    pairs: &'o mut smallvec::SmallVec<[(u32, Val<'a>, Val<'a>); 8]>,
    bad: &'o mut Option<(usize, &'static str)>,
}

fn plan(
    s: &AvroSchema,
    node: usize,
    trie: &Trie,
    units: &mut [Option<TimeUnit>],
    found: &mut [bool],
    depth: usize,
) -> P {
    if let Some(slot) = trie.capture {
        found[slot] = true;
        if units[slot].is_none() {
            units[slot] = time_unit(s, node);
        }
        return P::Capture(slot, node);
    }
    if let Some(list) = &trie.list {
        found[list.slot] = true;
        return plan_list(s, node, list, depth);
    }
    if trie.children.is_empty() || depth > MAX_DEPTH {
        return P::Skip(node);
    }
    match &s.nodes[node] {
        Node::Record { fields, .. } => {
            let steps: Vec<P> = fields
                .iter()
                .map(|(name, f)| match trie.child_key(name) {
                    Some(t) => plan(s, *f, t, units, found, depth + 1),
                    None => P::Skip(*f),
                })
                .collect();
            if steps.iter().all(|p| matches!(p, P::Skip(_))) {
                P::Skip(node)
            } else {
                P::Record(steps)
            }
        }
        Node::Union(branches) => {
            let steps: Vec<P> = branches
                .iter()
                .map(|b| plan(s, *b, trie, units, found, depth + 1))
                .collect();
            if steps.iter().all(|p| matches!(p, P::Skip(_))) {
                P::Skip(node)
            } else {
                P::Union(steps)
            }
        }
        Node::Map(values) => {
            let keys: Vec<(String, P)> = trie
                .children
                .iter()
                .filter_map(|(seg, t)| match seg {
                    Seg::Key(k) => Some((k.clone(), plan(s, *values, t, units, found, depth + 1))),
                    Seg::Index(_) => None,
                })
                .collect();
            P::Map {
                values: *values,
                keys,
            }
        }
        Node::Array(items) => {
            let index: Vec<(usize, P)> = trie
                .children
                .iter()
                .filter_map(|(seg, t)| match seg {
                    Seg::Index(i) => Some((*i, plan(s, *items, t, units, found, depth + 1))),
                    Seg::Key(_) => None,
                })
                .collect();
            P::Array {
                items: *items,
                index,
            }
        }
        _ => P::Skip(node),
    }
}

fn plan_list(s: &AvroSchema, node: usize, list: &ListCapture, depth: usize) -> P {
    let slot = list.slot as u32;
    match (&s.nodes[node], &list.item) {
        (Node::Union(branches), _) if depth <= MAX_DEPTH => P::Union(
            branches
                .iter()
                .map(|b| plan_list(s, *b, list, depth + 1))
                .collect(),
        ),
        (Node::Null, _) => P::Skip(node),
        (Node::Array(items), Some(item)) => {
            // The element's own captures (key and value): found or not, they do not
            // decide whether the schema provides the list.
            let item = plan(s, *items, item, &mut [None; 2], &mut [false; 2], depth + 1);
            P::List {
                slot,
                item: Box::new(item),
            }
        }
        (Node::Map(values), None) => P::Entries {
            slot,
            values: *values,
        },
        (Node::Record { .. }, None) => P::Fields { slot, record: node },
        _ => P::Bad { slot, node },
    }
}

fn time_unit(s: &AvroSchema, node: usize) -> Option<TimeUnit> {
    match &s.nodes[node] {
        Node::Long(u) => *u,
        Node::Union(b) => b.iter().find_map(|&n| time_unit(s, n)),
        _ => None,
    }
}

fn run<'a>(
    s: &'a AvroSchema,
    p: &'a P,
    r: &mut Cursor<'a>,
    out: &mut Out<'_, 'a>,
    depth: usize,
) -> Result<(), DecodeError> {
    match p {
        P::Skip(n) => skip(s, *n, r, depth),
        P::Capture(slot, n) => {
            out.slots[*slot] = materialise(s, *n, r, depth)?;
            Ok(())
        }
        P::Record(steps) => {
            for step in steps {
                run(s, step, r, out, depth + 1)?;
            }
            Ok(())
        }
        P::Union(steps) => {
            let b = r.index()?;
            let step = steps
                .get(b)
                .ok_or(DecodeError::Malformed("union branch out of range"))?;
            run(s, step, r, out, depth + 1)
        }
        P::Map { values, keys } => r.blocks(|r| {
            // Keys compared as bytes: a key equal to one of ours is valid UTF-8, and
            // the others need not be checked (they are skipped like their values).
            let len = r.len()?;
            let key = r.take(len)?;
            match keys.iter().find(|(k, _)| k.as_bytes() == key) {
                Some((_, step)) => run(s, step, r, out, depth + 1),
                None => skip(s, *values, r, depth + 1),
            }
        }),
        P::Array { items, index } => {
            let mut i = 0;
            r.blocks(|r| {
                let res = match index.iter().find(|(j, _)| *j == i) {
                    Some((_, step)) => run(s, step, r, out, depth + 1),
                    None => skip(s, *items, r, depth + 1),
                };
                i += 1;
                res
            })
        }
        P::List { slot, item } => r.blocks(|r| {
            let mut kv = [Val::Null, Val::Null];
            let mut inner = Out {
                slots: &mut kv,
                pairs: &mut *out.pairs,
                bad: &mut *out.bad,
            };
            run(s, item, r, &mut inner, depth + 1)?;
            let [k, v] = kv;
            out.pairs.push((*slot, k, v));
            Ok(())
        }),
        P::Entries { slot, values } => r.blocks(|r| {
            let k = r.string()?;
            let v = materialise(s, *values, r, depth + 1)?;
            out.pairs.push((*slot, Val::Str(Txt::B(k)), v));
            Ok(())
        }),
        P::Fields { slot, record } => {
            let Node::Record { fields, .. } = &s.nodes[*record] else {
                unreachable!("planned for a record")
            };
            for (name, f) in fields {
                let v = materialise(s, *f, r, depth + 1)?;
                out.pairs.push((*slot, Val::Str(Txt::B(name.as_str())), v));
            }
            Ok(())
        }
        P::Bad { slot, node } => {
            let v = materialise(s, *node, r, depth)?;
            if v != Val::Null && out.bad.is_none() {
                *out.bad = Some((*slot as usize, v.kind()));
            }
            Ok(())
        }
    }
}

fn skip(s: &AvroSchema, n: usize, r: &mut Cursor<'_>, depth: usize) -> Result<(), DecodeError> {
    if depth > 2 * MAX_DEPTH {
        return Err(DecodeError::Malformed("nested too deeply"));
    }
    match &s.nodes[n] {
        Node::Null => Ok(()),
        Node::Bool => r.take(1).map(|_| ()),
        Node::Int | Node::Long(_) => r.long().map(|_| ()),
        Node::Float => r.take(4).map(|_| ()),
        Node::Double => r.take(8).map(|_| ()),
        Node::Bytes | Node::Str => {
            let len = r.len()?;
            r.take(len).map(|_| ())
        }
        Node::Fixed(size) => r.take(*size).map(|_| ()),
        Node::Enum(_) => r.long().map(|_| ()),
        Node::Array(items) => r.skip_blocks(|r| skip(s, *items, r, depth + 1)),
        Node::Map(values) => r.skip_blocks(|r| {
            let len = r.len()?;
            r.take(len)?;
            skip(s, *values, r, depth + 1)
        }),
        Node::Union(branches) => {
            let b = branches
                .get(r.index()?)
                .ok_or(DecodeError::Malformed("union branch out of range"))?;
            skip(s, *b, r, depth + 1)
        }
        Node::Record { fields, .. } => {
            for (_, f) in fields {
                skip(s, *f, r, depth + 1)?;
            }
            Ok(())
        }
    }
}

fn materialise<'a>(
    s: &'a AvroSchema,
    n: usize,
    r: &mut Cursor<'a>,
    depth: usize,
) -> Result<Val<'a>, DecodeError> {
    if depth > 2 * MAX_DEPTH {
        return Err(DecodeError::Malformed("nested too deeply"));
    }
    Ok(match &s.nodes[n] {
        Node::Null => Val::Null,
        Node::Bool => Val::Bool(r.boolean()?),
        Node::Int | Node::Long(_) => Val::Int(r.long()?),
        Node::Float => {
            let mut b = [0u8; 4];
            b.copy_from_slice(r.take(4)?);
            Val::Float(f64::from(f32::from_le_bytes(b)))
        }
        Node::Double => {
            let mut b = [0u8; 8];
            b.copy_from_slice(r.take(8)?);
            Val::Float(f64::from_le_bytes(b))
        }
        Node::Bytes => {
            let len = r.len()?;
            Val::Bytes(r.take(len)?)
        }
        Node::Str => Val::Str(Txt::B(r.string()?)),
        Node::Fixed(size) => Val::Bytes(r.take(*size)?),
        Node::Enum(symbols) => {
            let i = r.index()?;
            Val::Str(Txt::B(
                symbols
                    .get(i)
                    .ok_or(DecodeError::Malformed("enum symbol out of range"))?,
            ))
        }
        Node::Array(items) => {
            let mut out = Vec::new();
            r.blocks(|r| {
                out.push(materialise(s, *items, r, depth + 1)?);
                Ok(())
            })?;
            Val::Array(out)
        }
        Node::Map(values) => {
            let mut out = Vec::new();
            r.blocks(|r| {
                let k = r.string()?;
                out.push((Txt::B(k), materialise(s, *values, r, depth + 1)?));
                Ok(())
            })?;
            Val::Map(out)
        }
        Node::Union(branches) => {
            let b = branches
                .get(r.index()?)
                .ok_or(DecodeError::Malformed("union branch out of range"))?;
            materialise(s, *b, r, depth + 1)?
        }
        Node::Record { fields, .. } => {
            let mut out = Vec::with_capacity(fields.len());
            for (name, f) in fields {
                out.push((Txt::B(name.as_str()), materialise(s, *f, r, depth + 1)?));
            }
            Val::Map(out)
        }
    })
}
