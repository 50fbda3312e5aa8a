//! A strict JSON reader (RFC 8259) that projects a document onto a mapping's [`Trie`]:
//! one pass, values off the trie are validated and skipped, values at a path's end are
//! captured with their strings borrowed from the input when they hold no escape.

use super::value::{Captures, ListCapture, Out, Trie, Txt, Val};

/// Bytes that end a plain run inside a string: `"`, `\\` and control characters.
static STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// The end of the plain run of string bytes from `start`: the first `"`, `\\` or control
/// character at or after it (or the end of the input). Eight bytes at a time where eight
/// remain (the document goes on after a string, so even short strings mostly fit one
/// word), then a byte at a time.
#[inline]
fn plain_run(b: &[u8], start: usize) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut k = start;
    while let Some(chunk) = b.get(k..k + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let quote = w ^ (LO * u64::from(b'"'));
        let backslash = w ^ (LO * u64::from(b'\\'));
        // The classic "has a zero byte" test (exact for the lowest byte it flags, which
        // is the one used) for `"` and `\\`, and "is below 0x20" for control bytes.
        let hits = (quote.wrapping_sub(LO) & !quote
            | backslash.wrapping_sub(LO) & !backslash
            | w.wrapping_sub(LO * 0x20) & !w)
            & HI;
        if hits != 0 {
            return k + (hits.trailing_zeros() / 8) as usize;
        }
        k += 8;
    }
    while let Some(&c) = b.get(k) {
        if STOP[usize::from(c)] {
            break;
        }
        k += 1;
    }
    k
}

/// Nesting deeper than this is refused (a record is not a parser benchmark).
const MAX_DEPTH: usize = 128;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid JSON at byte {at}: {what}")]
pub struct JsonError {
    pub at: usize,
    pub what: &'static str,
}

/// Reads the JSON document `input`, filling `caps.slots[i]` with the value at the trie's
/// capture `i` (slots stay [`Val::Null`] where the document has nothing) and
/// `caps.pairs` with the elements of its list captures.
pub fn project<'a>(
    input: &'a [u8],
    trie: &Trie,
    caps: &mut Captures<'a>,
    buf: &mut String,
) -> Result<(), JsonError> {
    let text = std::str::from_utf8(input).map_err(|e| JsonError {
        at: e.valid_up_to(),
        what: "not UTF-8",
    })?;
    let mut p = Parser {
        s: text,
        b: input,
        i: 0,
        buf,
    };
    p.ws();
    let mut out = caps.out();
    p.value(Some(trie), &mut out, 0)?;
    p.ws();
    if p.i != p.b.len() {
        return Err(p.err("trailing characters after the document"));
    }
    Ok(())
}

/// Reads the whole document as a value tree (tests and `check`).
pub fn parse<'a>(input: &'a [u8], buf: &mut String) -> Result<Val<'a>, JsonError> {
    let trie = Trie {
        capture: Some(0),
        ..Trie::default()
    };
    let mut caps = Captures::new(1);
    project(input, &trie, &mut caps, buf)?;
    Ok(std::mem::replace(&mut caps.slots[0], Val::Null))
}

struct Parser<'a, 'b> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
    buf: &'b mut String,
}

impl<'a> Parser<'a, '_> {
    fn err(&self, what: &'static str) -> JsonError {
        JsonError { at: self.i, what }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn expect(&mut self, c: u8, what: &'static str) -> Result<(), JsonError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(what))
        }
    }

    /// One value. `node`: where it sits in the trie (`None`: off the trie, skip).
    fn value(
        &mut self,
        node: Option<&Trie>,
        out: &mut Out<'_, 'a>,
        depth: usize,
    ) -> Result<(), JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        if let Some(n) = node {
            if let Some(slot) = n.capture {
                // Strings, the common capture, without the detour through a tree.
                let v = if self.peek() == Some(b'"') {
                    Val::Str(self.string()?)
                } else {
                    self.materialise(depth)?
                };
                Val::put(&mut out.slots[slot], v);
                return Ok(());
            }
            if let Some(list) = &n.list {
                return self.list(list, out, depth);
            }
        }
        match self.peek() {
            Some(b'{') => self.object(|p, key| {
                let child = node.and_then(|n| n.child_key(key.resolve_in(p.buf)));
                p.value(child, out, depth + 1)
            }),
            Some(b'[') => {
                let indexed = node.filter(|n| n.has_index_children());
                self.array(|p, index| {
                    let child = indexed.and_then(|n| n.child_index(index));
                    p.value(child, out, depth + 1)
                })
            }
            _ => self.scalar().map(|_| ()),
        }
    }

    /// A list capture: one pair per member of an object, or per object in an array.
    fn list(
        &mut self,
        list: &ListCapture,
        out: &mut Out<'_, 'a>,
        depth: usize,
    ) -> Result<(), JsonError> {
        let tag = list.slot as u32;
        match (self.peek(), &list.item) {
            (Some(b'{'), None) => self.object(|p, key| {
                let v = p.materialise(depth + 1)?;
                out.pairs.push((tag, Val::Str(key), v));
                Ok(())
            }),
            (Some(b'['), Some(item)) => self.array(|p, _| {
                if p.peek() != Some(b'{') {
                    return p.value(None, out, depth + 1);
                }
                let mut kv = [Val::Null, Val::Null];
                let mut inner = out.with_slots(&mut kv);
                p.value(Some(item), &mut inner, depth + 1)?;
                let [k, v] = kv;
                out.pairs.push((tag, k, v));
                Ok(())
            }),
            _ => {
                let v = self.materialise(depth)?;
                if v != Val::Null && out.bad.is_none() {
                    *out.bad = Some((list.slot, v.kind()));
                }
                Ok(())
            }
        }
    }

    /// A whole value as a tree.
    fn materialise(&mut self, depth: usize) -> Result<Val<'a>, JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        match self.peek() {
            Some(b'{') => {
                let mut entries = Vec::new();
                self.object(|p, key| {
                    entries.push((key, p.materialise(depth + 1)?));
                    Ok(())
                })?;
                Ok(Val::Map(entries))
            }
            Some(b'[') => {
                let mut items = Vec::new();
                self.array(|p, _| {
                    items.push(p.materialise(depth + 1)?);
                    Ok(())
                })?;
                Ok(Val::Array(items))
            }
            _ => self.scalar(),
        }
    }

    /// An object at the cursor: `member` reads each member's value (the cursor is on
    /// it) given its key.
    fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, Txt<'a>) -> Result<(), JsonError>,
    ) -> Result<(), JsonError> {
        self.expect(b'{', "expected an object")?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            let key = self.string()?;
            self.ws();
            self.expect(b':', "expected ':' after an object key")?;
            self.ws();
            member(self, key)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or '}' in an object")),
            }
        }
    }

    /// An array at the cursor: `item` reads each element given its index.
    fn array(
        &mut self,
        mut item: impl FnMut(&mut Self, usize) -> Result<(), JsonError>,
    ) -> Result<(), JsonError> {
        self.expect(b'[', "expected an array")?;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        let mut index = 0;
        loop {
            self.ws();
            item(self, index)?;
            index += 1;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or ']' in an array")),
            }
        }
    }

    fn scalar(&mut self) -> Result<Val<'a>, JsonError> {
        match self.peek() {
            Some(b'"') => self.string().map(Val::Str),
            Some(b't') => self.literal("true", Val::Bool(true)),
            Some(b'f') => self.literal("false", Val::Bool(false)),
            Some(b'n') => self.literal("null", Val::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            None => Err(self.err("unexpected end of input")),
            Some(_) => Err(self.err("expected a value")),
        }
    }

    fn literal(&mut self, word: &'static str, v: Val<'a>) -> Result<Val<'a>, JsonError> {
        if self.b[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(self.err("expected true, false or null"))
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<Val<'a>, JsonError> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("expected a digit")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.err("expected a digit after '.'"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("expected a digit in the exponent"));
            }
        }
        Ok(Val::Num(&self.s[start..self.i]))
    }

    /// A string at the cursor (which is on its opening quote): borrowed when it holds no
    /// escape, otherwise unescaped into the text buffer.
    fn string(&mut self) -> Result<Txt<'a>, JsonError> {
        self.expect(b'"', "expected a string")?;
        let start = self.i;
        // The end of the plain run: the closing quote, an escape or a control character
        // (one table lookup per byte: most strings are short, where a vectorised search
        // costs more to set up than it saves).
        let k = plain_run(self.b, start);
        self.i = k;
        match self.b.get(k) {
            None => return Err(self.err("unterminated string")),
            Some(b'"') => {
                let s = &self.s[start..k];
                self.i += 1;
                return Ok(Txt::B(s));
            }
            Some(b'\\') => {}
            Some(_) => return Err(self.err("control character in a string")),
        }
        // Escapes: copy what came before, then unescape the rest.
        let from = self.buf.len();
        self.buf.push_str(&self.s[start..self.i]);
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(Txt::Buf(from as u32, self.buf.len() as u32));
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = match self.peek() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            self.i += 1;
                            let hi = self.hex4()?;
                            let c = if (0xD800..0xDC00).contains(&hi) {
                                if !self.b[self.i..].starts_with(b"\\u") {
                                    return Err(self.err("lone high surrogate"));
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("high surrogate without a low one"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else if (0xDC00..0xE000).contains(&hi) {
                                return Err(self.err("lone low surrogate"));
                            } else {
                                hi
                            };
                            self.buf
                                .push(char::from_u32(c).ok_or(self.err("bad code point"))?);
                            continue;
                        }
                        _ => return Err(self.err("unknown escape")),
                    };
                    self.i += 1;
                    self.buf.push(c);
                }
                Some(0..=0x1f) => return Err(self.err("control character in a string")),
                Some(_) => {
                    // Copy a run of plain characters (UTF-8 is already validated).
                    let run = self.i;
                    while let Some(b) = self.peek() {
                        if b == b'"' || b == b'\\' || b < 0x20 {
                            break;
                        }
                        self.i += 1;
                    }
                    self.buf.push_str(&self.s[run..self.i]);
                }
                None => return Err(self.err("unterminated string")),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let h = self
            .b
            .get(self.i..self.i + 4)
            .ok_or(self.err("truncated \\u escape"))?;
        let mut v = 0;
        for &c in h {
            let d = (c as char).to_digit(16).ok_or(self.err("bad \\u escape"))?;
            v = v * 16 + d;
        }
        self.i += 4;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::super::value::Path;
    use super::*;
    use proptest::prelude::Just;

    fn slots_for<'a>(text: &'a str, paths: &[&str], buf: &mut String) -> Vec<Val<'a>> {
        let paths: Vec<Path> = paths.iter().map(|p| Path::parse(p).unwrap()).collect();
        let (trie, _) = Trie::build(&paths);
        let mut caps = Captures::new(paths.len());
        project(text.as_bytes(), &trie, &mut caps, buf).unwrap();
        caps.slots.to_vec()
    }

    proptest::proptest! {
        /// The word-at-a-time scan stops where the byte loop does, on any bytes
        /// (quotes, backslashes, control bytes, UTF-8 continuation bytes) and offsets.
        #[test]
        fn plain_run_agrees_with_a_byte_loop(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![
                    Just(b'"'), Just(b'\\'), 0u8..0x20, 0x20u8..0x80, 0x80u8..=0xff, Just(b'a')
                ],
                0..40,
            ),
            start in 0usize..40,
        ) {
            let start = start.min(bytes.len());
            let naive = (start..bytes.len())
                .find(|&k| STOP[usize::from(bytes[k])])
                .unwrap_or(bytes.len());
            proptest::prop_assert_eq!(plain_run(&bytes, start), naive);
        }
    }

    #[test]
    fn projects_paths_and_skips_the_rest() {
        let text = r#"{"a": {"skip": [1, {"x": "y"}, null, true], "b": "v\u00fc\"", "n": -1.5e3},
                       "list": [{"k": 1}, {"k": 2}], "a.b": "dotted"}"#;
        let mut buf = String::new();
        let s = slots_for(
            text,
            &["a.b", "a.n", "list[1].k", r#"["a.b"]"#, "missing.x"],
            &mut buf,
        );
        assert!(matches!(s[0], Val::Str(t) if t.resolve_in(&buf) == "vü\""));
        assert_eq!(s[1], Val::Num("-1.5e3"));
        assert_eq!(s[2], Val::Num("2"));
        assert!(matches!(s[3], Val::Str(Txt::B("dotted"))));
        assert_eq!(s[4], Val::Null);
    }

    #[test]
    fn refuses_what_rfc_8259_refuses() {
        let bad: &[&[u8]] = &[
            b"",
            b"{",
            b"{\"a\":1,}",
            b"[1,]",
            b"01",
            b"1.",
            b"-",
            b"\"\\ud800\"",
            b"\"\\udc00\"",
            b"\"a\nb\"",
            b"\"\\x\"",
            b"{\"a\" 1}",
            b"{} x",
            b"tru",
            b"\"\xff\"",
        ];
        for text in bad {
            let mut buf = String::new();
            assert!(
                parse(text, &mut buf).is_err(),
                "{:?} should be refused",
                String::from_utf8_lossy(text)
            );
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse(deep.as_bytes(), &mut String::new()).is_err());
    }

    #[test]
    fn surrogate_pairs_and_escaped_keys() {
        let mut buf = String::new();
        let s = slots_for(r#"{"k\u0065y": "\ud83d\ude00 ok"}"#, &["key"], &mut buf);
        assert!(matches!(s[0], Val::Str(t) if t.resolve_in(&buf) == "😀 ok"));
    }
}
