//! Avro binary data of any writer schema, projected onto a mapping's [`Trie`].
//!
//! The writer schema (from a Schema Registry, by id) is parsed once into [`AvroSchema`];
//! [`Plan::compile`] resolves the mapping's paths against it once per schema id — which
//! field of which record each path goes through, which union branches can lead there,
//! which paths this schema cannot provide — and the per-record work is then a walk that
//! skips every field no path needs and captures the rest with borrowed strings.

use std::collections::HashMap;

use serde_json::Value as Json;

use super::value::{Captures, ListCapture, Out, Seg, Trie, Txt, Val};
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

/// One step of reading a datum for a mapping: a flat list of these per record (nested
/// only under unions, maps and arrays), with the primitive reads and skips of the
/// writer schema resolved when the plan is compiled.
#[derive(Debug, Clone)]
enum Op {
    /// An int, long or enum, skipped.
    SkipVarint,
    /// A string or bytes, skipped.
    SkipLen,
    /// A boolean, float, double or fixed, skipped.
    SkipFixed(usize),
    /// Any value of this node, skipped.
    Skip(usize),
    Str(usize),
    Long(usize),
    Double(usize),
    Float(usize),
    Bool(usize),
    /// A null (a union's null branch): the slot is set to null.
    Null(usize),
    Enum(usize, usize),
    /// Any value of this node, materialised into the slot.
    Capture(usize, usize),
    /// One op list per branch.
    Union(Vec<Vec<Op>>),
    /// A union whose every branch is one read (an optional field): the branch's op.
    Choice(Vec<Op>),
    Map {
        values: usize,
        keys: Vec<(String, Vec<Op>)>,
    },
    Array {
        items: usize,
        index: Vec<(usize, Vec<Op>)>,
    },
    /// A list capture over an array: each element read with `item` into two slots of
    /// its own, giving one pair.
    List {
        slot: u32,
        item: Vec<Op>,
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
    root: Vec<Op>,
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
        let mut root = Vec::new();
        let mut p = Planner {
            s: &schema,
            units: &mut units,
            found: &mut found,
        };
        p.plan(schema.root, trie, 0, &mut root);
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
        let mut out = caps.out();
        exec(&self.schema, &self.root, &mut r, &mut out, 0)?;
        if r.position() != datum.len() {
            return Err(DecodeError::Malformed("trailing bytes after the datum"));
        }
        Ok(())
    }
}

/// Deep enough for any real schema; a recursive schema's data is cut off here.
const MAX_DEPTH: usize = 64;

struct Planner<'p> {
    s: &'p AvroSchema,
    units: &'p mut [Option<TimeUnit>],
    found: &'p mut [bool],
}

impl Planner<'_> {
    /// Appends to `out` the ops that read a value of `node` for trie node `trie`.
    fn plan(&mut self, node: usize, trie: &Trie, depth: usize, out: &mut Vec<Op>) {
        let s = self.s;
        if let Some(slot) = trie.capture {
            self.found[slot] = true;
            if self.units[slot].is_none() {
                self.units[slot] = time_unit(s, node);
            }
            out.push(match &s.nodes[node] {
                // An optional field (`["null", T]`): the branch's own read.
                Node::Union(branches) if depth <= MAX_DEPTH => {
                    Op::Choice(branches.iter().map(|&b| capture_op(s, b, slot)).collect())
                }
                _ => capture_op(s, node, slot),
            });
            return;
        }
        if let Some(list) = &trie.list {
            self.found[list.slot] = true;
            out.push(self.list(node, list, depth));
            return;
        }
        if trie.children.is_empty() || depth > MAX_DEPTH {
            skip_ops(s, node, depth, out);
            return;
        }
        match &s.nodes[node] {
            Node::Record { fields, .. } => {
                for (name, f) in fields {
                    match trie.child_key(name) {
                        Some(t) => self.plan(*f, t, depth + 1, out),
                        None => skip_ops(s, *f, depth + 1, out),
                    }
                }
            }
            Node::Union(branches) => {
                let steps: Vec<Vec<Op>> = branches
                    .iter()
                    .map(|b| {
                        let mut ops = Vec::new();
                        self.plan(*b, trie, depth + 1, &mut ops);
                        ops
                    })
                    .collect();
                if steps.iter().flatten().all(Op::is_skip) {
                    out.push(Op::Skip(node));
                } else {
                    out.push(Op::Union(steps));
                }
            }
            Node::Map(values) => {
                let keys = trie
                    .children
                    .iter()
                    .filter_map(|(seg, t)| match seg {
                        Seg::Key(k) => {
                            let mut ops = Vec::new();
                            self.plan(*values, t, depth + 1, &mut ops);
                            Some((k.clone(), ops))
                        }
                        Seg::Index(_) => None,
                    })
                    .collect();
                out.push(Op::Map {
                    values: *values,
                    keys,
                });
            }
            Node::Array(items) => {
                let index = trie
                    .children
                    .iter()
                    .filter_map(|(seg, t)| match seg {
                        Seg::Index(i) => {
                            let mut ops = Vec::new();
                            self.plan(*items, t, depth + 1, &mut ops);
                            Some((*i, ops))
                        }
                        Seg::Key(_) => None,
                    })
                    .collect();
                out.push(Op::Array {
                    items: *items,
                    index,
                });
            }
            _ => skip_ops(s, node, depth, out),
        }
    }

    fn list(&mut self, node: usize, list: &ListCapture, depth: usize) -> Op {
        let s = self.s;
        let slot = list.slot as u32;
        match (&s.nodes[node], &list.item) {
            (Node::Union(branches), _) if depth <= MAX_DEPTH => Op::Union(
                branches
                    .iter()
                    .map(|b| vec![self.list(*b, list, depth + 1)])
                    .collect(),
            ),
            (Node::Null, _) => Op::Skip(node),
            (Node::Array(items), Some(item)) => {
                // The element's own captures (key and value): found or not, they do not
                // decide whether the schema provides the list.
                let mut inner = Planner {
                    s,
                    units: &mut [None; 2],
                    found: &mut [false; 2],
                };
                let mut ops = Vec::new();
                inner.plan(*items, item, depth + 1, &mut ops);
                Op::List { slot, item: ops }
            }
            (Node::Map(values), None) => Op::Entries {
                slot,
                values: *values,
            },
            (Node::Record { .. }, None) => Op::Fields { slot, record: node },
            _ => Op::Bad { slot, node },
        }
    }
}

impl Op {
    fn is_skip(&self) -> bool {
        matches!(
            self,
            Op::SkipVarint | Op::SkipLen | Op::SkipFixed(_) | Op::Skip(_)
        )
    }
}

/// The op that captures a value of `node` into `slot`.
fn capture_op(s: &AvroSchema, node: usize, slot: usize) -> Op {
    match &s.nodes[node] {
        Node::Str => Op::Str(slot),
        Node::Int | Node::Long(_) => Op::Long(slot),
        Node::Double => Op::Double(slot),
        Node::Float => Op::Float(slot),
        Node::Bool => Op::Bool(slot),
        Node::Enum(_) => Op::Enum(slot, node),
        Node::Null => Op::Null(slot),
        _ => Op::Capture(slot, node),
    }
}

/// Appends the ops that skip a value of `node`: records flattened into their fields.
fn skip_ops(s: &AvroSchema, node: usize, depth: usize, out: &mut Vec<Op>) {
    match &s.nodes[node] {
        Node::Null => {}
        Node::Bool => out.push(Op::SkipFixed(1)),
        Node::Int | Node::Long(_) | Node::Enum(_) => out.push(Op::SkipVarint),
        Node::Float => out.push(Op::SkipFixed(4)),
        Node::Double => out.push(Op::SkipFixed(8)),
        Node::Fixed(n) => out.push(Op::SkipFixed(*n)),
        Node::Str | Node::Bytes => out.push(Op::SkipLen),
        Node::Record { fields, .. } if depth <= MAX_DEPTH => {
            for (_, f) in fields {
                skip_ops(s, *f, depth + 1, out);
            }
        }
        _ => out.push(Op::Skip(node)),
    }
}

fn time_unit(s: &AvroSchema, node: usize) -> Option<TimeUnit> {
    match &s.nodes[node] {
        Node::Long(u) => *u,
        Node::Union(b) => b.iter().find_map(|&n| time_unit(s, n)),
        _ => None,
    }
}

fn exec<'a>(
    s: &'a AvroSchema,
    ops: &'a [Op],
    r: &mut Cursor<'a>,
    out: &mut Out<'_, 'a>,
    depth: usize,
) -> Result<(), DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::Malformed("nested too deeply"));
    }
    for op in ops {
        let mut op = op;
        // An optional field: its branch's read, in place.
        while let Op::Choice(branches) = op {
            op = branches
                .get(r.index()?)
                .ok_or(DecodeError::Malformed("union branch out of range"))?;
        }
        match op {
            Op::SkipVarint => {
                r.long()?;
            }
            Op::SkipLen => {
                let len = r.len()?;
                r.take(len)?;
            }
            Op::SkipFixed(n) => {
                r.take(*n)?;
            }
            Op::Skip(n) => skip(s, *n, r, depth)?,
            Op::Str(slot) => Val::put(&mut out.slots[*slot], Val::Str(Txt::B(r.string()?))),
            Op::Long(slot) => Val::put(&mut out.slots[*slot], Val::Int(r.long()?)),
            Op::Double(slot) => Val::put(&mut out.slots[*slot], Val::Float(r.double()?)),
            Op::Float(slot) => {
                let mut b = [0u8; 4];
                b.copy_from_slice(r.take(4)?);
                Val::put(
                    &mut out.slots[*slot],
                    Val::Float(f64::from(f32::from_le_bytes(b))),
                );
            }
            Op::Bool(slot) => Val::put(&mut out.slots[*slot], Val::Bool(r.boolean()?)),
            Op::Null(slot) => Val::put(&mut out.slots[*slot], Val::Null),
            Op::Enum(slot, n) => {
                let Node::Enum(symbols) = &s.nodes[*n] else {
                    unreachable!("planned for an enum")
                };
                let i = r.index()?;
                let symbol = symbols
                    .get(i)
                    .ok_or(DecodeError::Malformed("enum symbol out of range"))?;
                Val::put(&mut out.slots[*slot], Val::Str(Txt::B(symbol)));
            }
            Op::Choice(_) => unreachable!("unwrapped above"),
            Op::Capture(slot, n) => {
                let v = materialise(s, *n, r, depth)?;
                Val::put(&mut out.slots[*slot], v);
            }
            Op::Union(branches) => {
                let b = r.index()?;
                let branch = branches
                    .get(b)
                    .ok_or(DecodeError::Malformed("union branch out of range"))?;
                exec(s, branch, r, out, depth + 1)?;
            }
            Op::Map { values, keys } => r.blocks(|r| {
                // Keys compared as bytes: a key equal to one of ours is valid UTF-8, and
                // the others need not be checked (they are skipped like their values).
                let len = r.len()?;
                let key = r.take(len)?;
                match keys.iter().find(|(k, _)| k.as_bytes() == key) {
                    Some((_, ops)) => exec(s, ops, r, out, depth + 1),
                    None => skip(s, *values, r, depth + 1),
                }
            })?,
            Op::Array { items, index } => {
                let mut i = 0;
                r.blocks(|r| {
                    let res = match index.iter().find(|(j, _)| *j == i) {
                        Some((_, ops)) => exec(s, ops, r, out, depth + 1),
                        None => skip(s, *items, r, depth + 1),
                    };
                    i += 1;
                    res
                })?;
            }
            Op::List { slot, item } => r.blocks(|r| {
                let mut kv = [Val::Null, Val::Null];
                let mut inner = out.with_slots(&mut kv);
                exec(s, item, r, &mut inner, depth + 1)?;
                let [k, v] = kv;
                out.pairs.push((*slot, k, v));
                Ok(())
            })?,
            Op::Entries { slot, values } => r.blocks(|r| {
                let k = r.string()?;
                let v = materialise(s, *values, r, depth + 1)?;
                out.pairs.push((*slot, Val::Str(Txt::B(k)), v));
                Ok(())
            })?,
            Op::Fields { slot, record } => {
                let Node::Record { fields, .. } = &s.nodes[*record] else {
                    unreachable!("planned for a record")
                };
                for (name, f) in fields {
                    let v = materialise(s, *f, r, depth + 1)?;
                    out.pairs.push((*slot, Val::Str(Txt::B(name.as_str())), v));
                }
            }
            Op::Bad { slot, node } => {
                let v = materialise(s, *node, r, depth)?;
                if v != Val::Null && out.bad.is_none() {
                    *out.bad = Some((*slot as usize, v.kind()));
                }
            }
        }
    }
    Ok(())
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
