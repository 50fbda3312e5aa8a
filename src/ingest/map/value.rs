//! The values a mapping reads: field paths, the trie of the paths one mapping needs,
//! and the borrowed value tree a decoder captures at those paths.
//!
//! Decoders do not build a tree of the whole record. They walk the record once with the
//! mapping's [`Trie`], skip every field no path needs, and *capture* the value at each
//! path's end into a slot. Strings borrow the input where they can; a string that had
//! to be rewritten (a JSON escape, a number read as text) lives in the record's text
//! buffer and is referred to by its range ([`Txt::Buf`]).

use std::fmt;

/// A string: borrowed from the input (or the compiled plan), or a range of the
/// record's text buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Txt<'a> {
    B(&'a str),
    Buf(u32, u32),
}

impl<'a> Txt<'a> {
    pub fn resolve(self, buf: &'a str) -> &'a str {
        match self {
            Txt::B(s) => s,
            Txt::Buf(a, b) => &buf[a as usize..b as usize],
        }
    }
}

/// A captured value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A JSON number as written (kept as text so that ids stay exact).
    Num(&'a str),
    Str(Txt<'a>),
    Bytes(&'a [u8]),
    Array(Vec<Val<'a>>),
    /// JSON objects, Avro records and maps, in input order.
    Map(Vec<(Txt<'a>, Val<'a>)>),
}

impl<'a> Val<'a> {
    pub fn kind(&self) -> &'static str {
        match self {
            Val::Null => "null",
            Val::Bool(_) => "boolean",
            Val::Int(_) | Val::Float(_) | Val::Num(_) => "number",
            Val::Str(_) => "string",
            Val::Bytes(_) => "bytes",
            Val::Array(_) => "array",
            Val::Map(_) => "object",
        }
    }

    /// The value at `path` below this one (the last of repeated keys wins).
    pub fn get(&self, path: &[Seg], buf: &str) -> Option<&Val<'a>> {
        let Some((first, rest)) = path.split_first() else {
            return Some(self);
        };
        let next = match (first, self) {
            (Seg::Key(k), Val::Map(entries)) => entries
                .iter()
                .rev()
                .find(|(name, _)| name.resolve_in(buf) == k)
                .map(|(_, v)| v),
            (Seg::Index(i), Val::Array(items)) => items.get(*i),
            _ => None,
        }?;
        next.get(rest, buf)
    }

    /// Stores a captured value. A slot is almost always still null here (a map may
    /// repeat a key): the old value is dropped only when it owns memory, so that a plain
    /// store costs no call to drop glue.
    #[inline(always)]
    pub(crate) fn put(slot: &mut Val<'a>, v: Val<'a>) {
        let old = std::mem::replace(slot, v);
        if matches!(old, Val::Array(_) | Val::Map(_)) {
            drop(old);
        } else {
            std::mem::forget(old);
        }
    }

    /// As a number: JSON numbers, integers, floats, and numeric strings.
    pub fn as_f64(&self, buf: &str) -> Option<f64> {
        match self {
            Val::Int(i) => Some(*i as f64),
            Val::Float(f) => Some(*f),
            Val::Num(s) => s.parse().ok(),
            Val::Str(t) => t.resolve_in(buf).trim().parse().ok(),
            _ => None,
        }
    }
}

impl Txt<'_> {
    /// Like [`Txt::resolve`], for a buffer borrowed for a shorter time.
    pub fn resolve_in<'s>(&'s self, buf: &'s str) -> &'s str {
        match self {
            Txt::B(s) => s,
            Txt::Buf(a, b) => &buf[*a as usize..*b as usize],
        }
    }
}

/// One step of a path: a field/key name or an array index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Seg {
    Key(String),
    Index(usize),
}

impl fmt::Display for Seg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seg::Key(k) if is_plain(k) => write!(f, "{k}"),
            Seg::Key(k) => write!(f, "[{k:?}]"),
            Seg::Index(i) => write!(f, "[{i}]"),
        }
    }
}

fn is_plain(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '$' || c == '@')
}

/// A parsed path: `context.device.type`, `properties["feature.flag"]`, `items[0].id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Path(pub Vec<Seg>);

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 && matches!(s, Seg::Key(k) if is_plain(k)) {
                f.write_str(".")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

impl Path {
    /// Parses a path. Keys are separated by `.`; `["..."]` quotes a key that contains
    /// dots or brackets (OpenTelemetry attribute names); `[N]` indexes an array.
    pub fn parse(text: &str) -> Result<Path, String> {
        let mut segs = Vec::new();
        let b = text.as_bytes();
        let mut i = 0;
        let mut expect_key = true;
        while i < b.len() {
            match b[i] {
                b'.' if !expect_key => {
                    i += 1;
                    expect_key = true;
                    if i == b.len() {
                        return Err(format!("{text:?}: ends with '.'"));
                    }
                }
                b'[' => {
                    let close = text[i..]
                        .find(']')
                        .map(|j| i + j)
                        .ok_or_else(|| format!("{text:?}: '[' without ']'"))?;
                    let inner = &text[i + 1..close];
                    if inner.starts_with('"') {
                        // A quoted key may itself contain ']': find the closing quote.
                        let end = text[i + 2..]
                            .find("\"]")
                            .map(|j| i + 2 + j)
                            .ok_or_else(|| format!("{text:?}: unterminated quoted key"))?;
                        let key = &text[i + 2..end];
                        if key.is_empty() {
                            return Err(format!("{text:?}: empty key"));
                        }
                        segs.push(Seg::Key(key.to_string()));
                        i = end + 2;
                    } else {
                        let n: usize = inner.parse().map_err(|_| {
                            format!("{text:?}: [{inner}] is neither an index nor a quoted key")
                        })?;
                        segs.push(Seg::Index(n));
                        i = close + 1;
                    }
                    expect_key = false;
                }
                _ if expect_key => {
                    let end = text[i..].find(['.', '[']).map_or(text.len(), |j| i + j);
                    if end == i {
                        return Err(format!("{text:?}: empty key"));
                    }
                    segs.push(Seg::Key(text[i..end].to_string()));
                    i = end;
                    expect_key = false;
                }
                c => {
                    return Err(format!(
                        "{text:?}: unexpected {:?} at byte {i}",
                        char::from(c)
                    ));
                }
            }
        }
        if segs.is_empty() {
            return Err("empty path".into());
        }
        Ok(Path(segs))
    }
}

/// The paths one mapping reads, as a trie. A node with `capture` is the end of a path:
/// the decoder materialises the whole value there into slot `capture` and does not
/// descend further (paths below a captured one are read from the captured value). A node
/// with `list` is the end of a list path (a record's flag assignments): the decoder
/// emits one pair per element instead of building the list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trie {
    pub capture: Option<usize>,
    pub list: Option<ListCapture>,
    pub children: Vec<(Seg, Trie)>,
}

/// How a list path is read, element by element, into [`Captures::pairs`].
#[derive(Debug, Clone, PartialEq)]
pub struct ListCapture {
    /// The slot the pairs are tagged with (the path's number).
    pub slot: usize,
    /// `None`: an object (or map, or record) — one pair (key, value) per member. `Some`:
    /// an array of objects — each object is projected onto this trie (captures 0 and 1)
    /// and gives one pair (capture 0, capture 1); other elements are skipped.
    pub item: Option<Box<Trie>>,
}

/// How a path asked for as a list is to be read (see [`Trie::build_with_lists`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ListItem {
    /// An object of key → value.
    Entries,
    /// A list of objects, with the paths of the key and the value within each.
    Objects(Path, Path),
}

/// What a decoder captured from one record: a value per slot, the pairs of the list
/// captures, and the first list capture whose value was of the wrong kind.
#[derive(Debug, Clone)]
pub struct Captures<'a> {
    pub slots: smallvec::SmallVec<[Val<'a>; 16]>,
    /// (slot, key, value), in input order.
    pub pairs: smallvec::SmallVec<[(u32, Val<'a>, Val<'a>); 8]>,
    /// (slot, kind found): a list path held neither null nor what the list reads.
    pub bad: Option<(usize, &'static str)>,
}

impl Drop for Captures<'_> {
    /// Dropping a slot vector element by element costs more than decoding some fields,
    /// and almost every slot holds a scalar (borrowed text, a number) that owns nothing:
    /// the values that own memory (lists, objects) are dropped here, then the inline
    /// vectors are forgotten whole. A vector that spilled to the heap is dropped as usual.
    fn drop(&mut self) {
        let owns = |v: &Val<'_>| matches!(v, Val::Array(_) | Val::Map(_));
        for v in self.slots.iter_mut().filter(|v| owns(v)) {
            *v = Val::Null;
        }
        for (_, k, v) in self.pairs.iter_mut() {
            if owns(k) {
                *k = Val::Null;
            }
            if owns(v) {
                *v = Val::Null;
            }
        }
        if !self.slots.spilled() {
            std::mem::forget(std::mem::take(&mut self.slots));
        }
        if !self.pairs.spilled() {
            std::mem::forget(std::mem::take(&mut self.pairs));
        }
    }
}

/// Where a decoder writes: the parts of [`Captures`], so that the elements of a list
/// can be read into two slots of their own while their pairs go to the record's list.
pub(crate) struct Out<'o, 'a> {
    pub slots: &'o mut [Val<'a>],
    pub pairs: &'o mut smallvec::SmallVec<[(u32, Val<'a>, Val<'a>); 8]>,
    pub bad: &'o mut Option<(usize, &'static str)>,
}

impl<'a> Out<'_, 'a> {
    /// The same lists, with `slots` in place of the record's (a list element's key and
    /// value).
    pub fn with_slots<'p>(&'p mut self, slots: &'p mut [Val<'a>]) -> Out<'p, 'a> {
        Out {
            slots,
            pairs: &mut *self.pairs,
            bad: &mut *self.bad,
        }
    }
}

impl<'a> Captures<'a> {
    /// Where a decoder writes this record's captures.
    pub(crate) fn out(&mut self) -> Out<'_, 'a> {
        Out {
            slots: &mut self.slots,
            pairs: &mut self.pairs,
            bad: &mut self.bad,
        }
    }

    pub fn new(slots: usize) -> Captures<'a> {
        // Inline slots start as one block copy of nulls, not a clone per slot.
        let slots = if slots <= 16 {
            smallvec::SmallVec::from_buf_and_len([const { Val::Null }; 16], slots)
        } else {
            smallvec::smallvec![Val::Null; slots]
        };
        Captures {
            slots,
            pairs: smallvec::SmallVec::new(),
            bad: None,
        }
    }

    /// The pairs of list slot `slot`.
    pub fn pairs_of(&self, slot: usize) -> impl Iterator<Item = (&Val<'a>, &Val<'a>)> {
        self.pairs
            .iter()
            .filter(move |(s, _, _)| *s as usize == slot)
            .map(|(_, k, v)| (k, v))
    }
}

/// Where a path's value is found: the slot that captures it and the rest of the path
/// within the captured value.
pub type Located = (usize, Vec<Seg>);

impl Trie {
    /// Builds the trie of `paths` (slot i captures `paths[i]`). Returns, for every path,
    /// where its value is found: `(slot, rest)` — the captured slot and the remaining
    /// path within it (empty unless a shorter path already captures a prefix).
    pub fn build(paths: &[Path]) -> (Trie, Vec<Located>) {
        let (trie, located, _) = Trie::build_with_lists(paths, &vec![None; paths.len()]);
        (trie, located)
    }

    /// Like [`Trie::build`], where `lists[i]` asks for path i to be read as a list. That
    /// is done when no other path is a prefix of it or extends it (the third result says
    /// for which paths); otherwise the path is captured whole like any other.
    pub fn build_with_lists(
        paths: &[Path],
        lists: &[Option<ListItem>],
    ) -> (Trie, Vec<Located>, Vec<bool>) {
        let mut root = Trie::default();
        let related = |i: usize, j: usize| {
            let (a, b) = (&paths[i].0, &paths[j].0);
            let n = a.len().min(b.len());
            a[..n] == b[..n]
        };
        let as_list: Vec<bool> = (0..paths.len())
            .map(|i| lists[i].is_some() && (0..paths.len()).all(|j| j == i || !related(i, j)))
            .collect();
        // Shorter paths first, so that a prefix captures before its extensions.
        let mut order: Vec<usize> = (0..paths.len()).collect();
        order.sort_by_key(|&i| paths[i].0.len());
        let mut located = vec![(0, Vec::new()); paths.len()];
        'paths: for i in order {
            let mut node = &mut root;
            for (depth, seg) in paths[i].0.iter().enumerate() {
                if let Some(slot) = node.capture {
                    located[i] = (slot, paths[i].0[depth..].to_vec());
                    continue 'paths;
                }
                let pos = match node.children.iter().position(|(s, _)| s == seg) {
                    Some(p) => p,
                    None => {
                        node.children.push((seg.clone(), Trie::default()));
                        node.children.len() - 1
                    }
                };
                node = &mut node.children[pos].1;
            }
            located[i] = match node.capture {
                Some(slot) => (slot, Vec::new()),
                None if as_list[i] => {
                    let item = match &lists[i] {
                        Some(ListItem::Objects(key, value)) => {
                            Some(Box::new(Trie::build(&[key.clone(), value.clone()]).0))
                        }
                        _ => None,
                    };
                    node.list = Some(ListCapture { slot: i, item });
                    (i, Vec::new())
                }
                None => {
                    // Shortest first: nothing was placed below this node yet.
                    node.capture = Some(i);
                    (i, Vec::new())
                }
            };
        }
        (root, located, as_list)
    }

    #[inline]
    pub fn child_key(&self, key: &str) -> Option<&Trie> {
        // Length and first byte before the bytes: most keys of a document are not ours.
        let (len, first) = (key.len(), key.as_bytes().first().copied());
        self.children.iter().find_map(|(s, t)| match s {
            Seg::Key(k) if k.len() == len && k.as_bytes().first().copied() == first && k == key => {
                Some(t)
            }
            _ => None,
        })
    }

    pub fn child_index(&self, i: usize) -> Option<&Trie> {
        self.children.iter().find_map(|(s, t)| match s {
            Seg::Index(j) if *j == i => Some(t),
            _ => None,
        })
    }

    pub fn has_index_children(&self) -> bool {
        self.children
            .iter()
            .any(|(s, _)| matches!(s, Seg::Index(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(p: &Path) -> Vec<String> {
        p.0.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn paths_parse_with_quoted_keys_and_indexes() {
        let p = Path::parse("context.device.type").unwrap();
        assert_eq!(keys(&p), ["context", "device", "type"]);
        let p = Path::parse(r#"attributes["feature_flag.key"]"#).unwrap();
        assert_eq!(
            p.0,
            vec![
                Seg::Key("attributes".into()),
                Seg::Key("feature_flag.key".into())
            ]
        );
        let p = Path::parse("items[2].id").unwrap();
        assert_eq!(p.0[1], Seg::Index(2));
        assert_eq!(p.to_string(), "items[2].id");
        assert_eq!(
            Path::parse(r#"a["x.y"]"#).unwrap().to_string(),
            r#"a["x.y"]"#
        );
        for bad in [
            "", "a.", ".a", "a..b", "a[", "a[x]", r#"a["x"#, "a[]", r#"a[""]"#,
        ] {
            assert!(Path::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn a_captured_prefix_serves_the_longer_paths() {
        let paths = [
            Path::parse("context.flags").unwrap(),
            Path::parse("context.flags[0].key").unwrap(),
            Path::parse("context.device.type").unwrap(),
            Path::parse("context.flags").unwrap(),
        ];
        let (trie, located) = Trie::build(&paths);
        assert_eq!(located[0], (0, vec![]));
        assert_eq!(located[1], (0, vec![Seg::Index(0), Seg::Key("key".into())]));
        assert_eq!(located[2], (2, vec![]));
        assert_eq!(located[3], (0, vec![]));
        let ctx = trie.child_key("context").unwrap();
        assert_eq!(ctx.child_key("flags").unwrap().capture, Some(0));
        assert!(ctx.child_key("flags").unwrap().children.is_empty());
    }
}
