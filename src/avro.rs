//! Avro binary encoding primitives, shared by the output records, the container-file
//! writer and the simulator. Decoding lives in `ingest::decode` (borrowing reader);
//! the specification's Parsing Canonical Form and fingerprint in [`canonical`].

pub mod canonical;

/// Appends Avro binary values to a buffer.
#[derive(Debug, Default)]
pub struct AvroWriter(pub Vec<u8>);

impl AvroWriter {
    pub fn with_capacity(n: usize) -> AvroWriter {
        AvroWriter(Vec::with_capacity(n))
    }

    /// `long` and `int`: zig-zag varint.
    pub fn long(&mut self, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            self.0.push((z as u8) | 0x80);
            z >>= 7;
        }
        self.0.push(z as u8);
    }

    /// `string` and `bytes`: length, then the bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.long(b.len() as i64);
        self.0.extend_from_slice(b);
    }

    pub fn string(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    pub fn double(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    pub fn boolean(&mut self, b: bool) {
        self.0.push(u8::from(b));
    }

    /// A `["null", T]` union.
    pub fn opt<T>(&mut self, v: Option<T>, f: impl FnOnce(&mut Self, T)) {
        match v {
            None => self.long(0),
            Some(x) => {
                self.long(1);
                f(self, x);
            }
        }
    }

    /// An array or map written as one block (or none when empty), then the 0 terminator.
    pub fn block<T>(&mut self, items: &[T], mut f: impl FnMut(&mut Self, &T)) {
        if !items.is_empty() {
            self.long(items.len() as i64);
            for item in items {
                f(self, item);
            }
        }
        self.long(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_varints_match_the_spec_examples() {
        // Avro specification, "Binary encoding": 0→00, -1→01, 1→02, -2→03, 2→04, -64→7f, 64→80 01.
        for (v, bytes) in [
            (0i64, vec![0x00u8]),
            (-1, vec![0x01]),
            (1, vec![0x02]),
            (-2, vec![0x03]),
            (2, vec![0x04]),
            (-64, vec![0x7f]),
            (64, vec![0x80, 0x01]),
        ] {
            let mut w = AvroWriter::default();
            w.long(v);
            assert_eq!(w.0, bytes, "{v}");
        }
    }
}
