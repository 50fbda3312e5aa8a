//! The partial aggregates of one (flag, input partition, window) and their wire format:
//! Avro single-object encoding of `schemas/window_partial.avsc`, written and read by
//! hand (checked against apache-avro, and against fastavro and Python's HdrHistogram in
//! `tests/interop_python.rs`).
//!
//! Decoding trusts nothing: every length is checked against the bytes left before
//! anything is allocated, every count against its Rust type, and histograms against
//! the bounds of [`new_histogram`] (stage 2 adds them with `Histogram::add`).
//!
//! Writer and reader stay in one file, each in the schema's field order, so that a
//! change to one is seen beside the other (hence the file's length).

use std::sync::LazyLock;

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};

use crate::avro::AvroWriter;
use crate::window::aggregate::{
    Agg, Arm, BUCKETS, Buckets, CELL_SAMPLE, HIST_HIGH, HIST_LOW, HIST_SIGFIG, Q_BINS, Q_BUCKETS,
    QuantileBuckets, UnitSample, new_histogram,
};
use crate::window::{CONTROL, Cell, TREATMENT};

/// The aggregates of one flag over one window from one input partition (stage 1's output).
#[derive(Debug, Clone)]
pub struct Partial {
    pub flag_key: String,
    /// Version of the policy whose metrics (in order) the arms' aggregates follow.
    pub policy_version: String,
    pub window_start: i64,
    pub window_end: i64,
    /// The input topic and partition the events came from.
    pub topic: String,
    pub partition: i32,
    /// First offset of the partition that contributed to the window, -1 if none.
    pub first_offset: i64,
    /// Every record of the partition below this offset was read when the window closed.
    pub read_until: i64,
    /// Late events of the flag from this partition since the previous partial.
    pub late_events: u64,
    /// Wall clock of the publishing instance, epoch millis.
    pub produced_at: i64,
    /// The stage 1 instance that published it.
    pub instance: String,
    /// Every cohort the flag has seen, `*` included, empty ones too.
    pub cohorts: Vec<(String, Cell)>,
}

pub const SCHEMA: &str = include_str!("../../schemas/window_partial.avsc");

/// Single-object encoding's marker.
const MAGIC: [u8; 2] = [0xC3, 0x01];
/// HdrHistogram's V2 cookie and V2 + DEFLATE cookie (big-endian on the wire).
const V2_COOKIE: u32 = 0x1c84_9313;
const V2_DEFLATE_COOKIE: u32 = 0x1c84_9314;
/// Bytes of the V2 header: cookie, payload length, normalizing offset, significant
/// digits, lowest and highest trackable value, integer-to-double ratio.
const V2_HEADER: usize = 40;

/// The CRC-64-AVRO fingerprint of [`SCHEMA`]'s Parsing Canonical Form.
pub fn fingerprint() -> u64 {
    static FP: LazyLock<u64> = LazyLock::new(|| {
        // A constant schema, which the test
        // `schema_is_valid_avro_and_the_fingerprint_is_the_specifications` parses.
        crate::avro::canonical::fingerprint_str(SCHEMA)
            .unwrap_or_else(|e| unreachable!("schemas/window_partial.avsc: {e}"))
    });
    *FP
}

/// Why bytes are not a [`Partial`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PartialError {
    #[error("not an Avro single-object encoding: starts {0:02x?}, expected [c3, 01]")]
    Magic([u8; 2]),
    #[error(
        "unknown writer schema fingerprint {found:#018x} (WindowPartial's is {expected:#018x})"
    )]
    UnknownFingerprint { found: u64, expected: u64 },
    #[error("truncated: {what} at byte {at} runs past the end")]
    Truncated { what: &'static str, at: usize },
    #[error("{what} at byte {at}: a varint longer than 10 bytes")]
    Varint { what: &'static str, at: usize },
    #[error("{what}: union branch {branch}, the schema has {branches}")]
    Branch {
        what: &'static str,
        branch: i64,
        branches: usize,
    },
    #[error("{what}: {len} buckets, expected {expected}")]
    BucketLength {
        what: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("{what}: {value} is out of range")]
    OutOfRange { what: &'static str, value: i64 },
    #[error("{what} is not UTF-8")]
    Utf8 { what: &'static str },
    #[error(
        "unit sample: keys not strictly increasing, more than {CELL_SAMPLE}, or inconsistent with tau and full"
    )]
    Sample,
    #[error("{0} bytes after the record")]
    Trailing(usize),
    #[error("histogram: {0}")]
    Histogram(String),
}

/// Avro single-object encoding: `C3 01`, [`fingerprint`] little-endian, the record.
pub fn encode(p: &Partial) -> Vec<u8> {
    let mut w = AvroWriter::with_capacity(1024);
    w.0.extend_from_slice(&MAGIC);
    w.0.extend_from_slice(&fingerprint().to_le_bytes());
    w.string(&p.flag_key);
    w.string(&p.policy_version);
    w.long(p.window_start);
    w.long(p.window_end);
    w.string(&p.topic);
    w.long(i64::from(p.partition));
    w.long(p.first_offset);
    w.long(p.read_until);
    w.long(count(p.late_events));
    w.long(p.produced_at);
    w.string(&p.instance);
    w.block(&p.cohorts, |w, (name, cell)| {
        w.string(name);
        write_arm(w, &cell[TREATMENT]);
        write_arm(w, &cell[CONTROL]);
    });
    w.0
}

/// A count as an Avro long (saturating: no counter reaches 2^63).
fn count(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn write_arm(w: &mut AvroWriter, a: &Arm) {
    w.long(count(a.exposures));
    w.long(count(a.events));
    w.block(&a.aggs, write_agg);
    let (keys, tau, full) = a.units.parts();
    w.block(&keys, |w, k| w.long(i64::from(*k)));
    w.long(i64::from(tau));
    w.boolean(full);
}

fn write_agg(w: &mut AvroWriter, agg: &Agg) {
    let buckets = |w: &mut AvroWriter, b: &Buckets| {
        w.block(&b.x, |w, v| w.double(*v));
        w.block(&b.y, |w, v| w.double(*v));
    };
    match agg {
        Agg::Rate { num, den, units } => {
            w.long(0);
            w.long(count(*num));
            w.long(count(*den));
            w.opt(units.as_deref(), buckets);
        }
        Agg::Mean {
            n,
            sum,
            sumsq,
            units,
        } => {
            w.long(1);
            w.long(count(*n));
            w.double(*sum);
            w.double(*sumsq);
            w.opt(units.as_deref(), buckets);
        }
        Agg::Quantile { hist, units } => {
            w.long(2);
            w.opt(hist.as_deref(), |w, h| w.bytes(&histogram_bytes(h)));
            let cells: Vec<(usize, usize, u32)> = units
                .iter()
                .flat_map(|u| u.counts.iter().enumerate())
                .flat_map(|(b, row)| row.iter().enumerate().map(move |(k, &c)| (b, k, c)))
                .filter(|&(_, _, c)| c > 0)
                .collect();
            // A table without counts is null, as before the first value.
            w.opt((!cells.is_empty()).then_some(cells), |w, cells| {
                w.block(&cells, |w, &(b, k, c)| {
                    w.long(b as i64);
                    w.long(k as i64);
                    w.long(i64::from(c));
                });
            });
        }
    }
}

/// HdrHistogram's V2 + DEFLATE serialization, with the zlib stream in stored
/// (uncompressed) blocks. Any inflater reads it (HdrHistogram's own, Python's zlib), and
/// it costs 2–3 µs where a DEFLATE compressor's setup alone costs ~20 µs per histogram
/// (miniz_oxide zeroes ~300 KiB of state per stream): 13–25% of stage 1's time went
/// there. The V2 counts are already varint and run-length coded, so DEFLATE saved
/// 10–40% of a histogram's few hundred bytes; the producer's lz4 compresses the batch.
fn histogram_bytes(h: &Histogram<u32>) -> Vec<u8> {
    thread_local! {
        static V2: std::cell::RefCell<V2Serializer> = std::cell::RefCell::new(V2Serializer::new());
    }
    let mut v2 = Vec::new();
    // Writing into a Vec cannot fail: the serializer's errors are the writer's I/O
    // errors and a count array too long for usize (ours has 3,328 entries).
    V2.with_borrow_mut(|s| s.serialize(h, &mut v2))
        .unwrap_or_else(|e| unreachable!("serializing a histogram into memory: {e}"));
    let z = zlib_stored(&v2);
    let mut out = Vec::with_capacity(8 + z.len());
    out.extend_from_slice(&V2_DEFLATE_COOKIE.to_be_bytes());
    out.extend_from_slice(&(z.len() as u32).to_be_bytes());
    out.extend_from_slice(&z);
    out
}

/// A zlib stream (RFC 1950) of `data` in stored DEFLATE blocks (RFC 1951 §3.2.4).
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    const MAX_BLOCK: usize = u16::MAX as usize;
    let mut out = Vec::with_capacity(data.len() + 11 + 5 * (data.len() / MAX_BLOCK));
    // CMF: deflate, 32 KiB window; FLG: no dictionary, fastest, FCHECK (0x7801 % 31 == 0).
    out.extend_from_slice(&[0x78, 0x01]);
    let blocks = data.len().div_ceil(MAX_BLOCK).max(1);
    for i in 0..blocks {
        let block = &data[(i * MAX_BLOCK).min(data.len())..((i + 1) * MAX_BLOCK).min(data.len())];
        let len = block.len() as u16;
        out.push(u8::from(i + 1 == blocks)); // BFINAL, BTYPE = 00 (stored)
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    let mut adler = adler2::Adler32::new();
    adler.write_slice(data);
    out.extend_from_slice(&adler.checksum().to_be_bytes());
    out
}

/// Reads a [`Partial`] from its single-object encoding. Never panics; arrays are
/// allocated as their items are read (a count beyond the bytes left is refused first),
/// so memory is bounded by the input's size: at most ~26 KiB (histogram and unit
/// table) per quantile aggregate, about the input's size for the rest.
pub fn decode(bytes: &[u8]) -> Result<Partial, PartialError> {
    let mut r = Reader { bytes, at: 0 };
    let magic = r.take(2, "single-object marker")?;
    if magic != MAGIC {
        return Err(PartialError::Magic([magic[0], magic[1]]));
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(r.take(8, "schema fingerprint")?);
    let found = u64::from_le_bytes(fp);
    if found != fingerprint() {
        return Err(PartialError::UnknownFingerprint {
            found,
            expected: fingerprint(),
        });
    }
    let p = Partial {
        flag_key: r.string("flag_key")?,
        policy_version: r.string("policy_version")?,
        window_start: r.long("window_start")?,
        window_end: r.long("window_end")?,
        topic: r.string("topic")?,
        partition: r.int("partition")?,
        first_offset: r.long("first_offset")?,
        read_until: r.long("read_until")?,
        late_events: r.count("late_events")?,
        produced_at: r.long("produced_at")?,
        instance: r.string("instance")?,
        cohorts: r.array("cohorts", |r| {
            let name = r.string("cohort")?;
            let treatment = r.arm()?;
            let control = r.arm()?;
            Ok((name, [treatment, control]))
        })?,
    };
    match r.bytes.len() - r.at {
        0 => Ok(p),
        n => Err(PartialError::Trailing(n)),
    }
}

/// A cursor over Avro binary data.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], PartialError> {
        if n > self.left() {
            return Err(PartialError::Truncated { what, at: self.at });
        }
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    /// A zig-zag varint `long` (and `int`, union branch, length, count).
    fn long(&mut self, what: &'static str) -> Result<i64, PartialError> {
        let start = self.at;
        let mut z: u64 = 0;
        for i in 0..10 {
            let b = self.take(1, what)?[0];
            z |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((z >> 1) as i64 ^ -((z & 1) as i64));
            }
        }
        Err(PartialError::Varint { what, at: start })
    }

    fn int(&mut self, what: &'static str) -> Result<i32, PartialError> {
        let v = self.long(what)?;
        i32::try_from(v).map_err(|_| PartialError::OutOfRange { what, value: v })
    }

    /// A non-negative `long` as a count.
    fn count(&mut self, what: &'static str) -> Result<u64, PartialError> {
        let v = self.long(what)?;
        u64::try_from(v).map_err(|_| PartialError::OutOfRange { what, value: v })
    }

    /// A length of `bytes` or `string`, checked against the bytes left.
    fn len(&mut self, what: &'static str) -> Result<usize, PartialError> {
        let at = self.at;
        let v = self.long(what)?;
        let n = usize::try_from(v).map_err(|_| PartialError::OutOfRange { what, value: v })?;
        if n > self.left() {
            return Err(PartialError::Truncated { what, at });
        }
        Ok(n)
    }

    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], PartialError> {
        let n = self.len(what)?;
        self.take(n, what)
    }

    fn string(&mut self, what: &'static str) -> Result<String, PartialError> {
        let b = self.bytes(what)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| PartialError::Utf8 { what })
    }

    fn double(&mut self, what: &'static str) -> Result<f64, PartialError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8, what)?);
        Ok(f64::from_le_bytes(b))
    }

    fn boolean(&mut self, what: &'static str) -> Result<bool, PartialError> {
        match self.take(1, what)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(PartialError::OutOfRange {
                what,
                value: i64::from(b),
            }),
        }
    }

    /// A union's branch index, one of `branches`.
    fn branch(&mut self, what: &'static str, branches: usize) -> Result<usize, PartialError> {
        let b = self.long(what)?;
        usize::try_from(b)
            .ok()
            .filter(|&i| i < branches)
            .ok_or(PartialError::Branch {
                what,
                branch: b,
                branches,
            })
    }

    /// An array in blocks (a negative count is followed by the block's byte size).
    /// Every item of this schema takes at least one byte, so a count beyond the bytes
    /// left is refused before anything is allocated.
    fn array<T>(
        &mut self,
        what: &'static str,
        mut item: impl FnMut(&mut Self) -> Result<T, PartialError>,
    ) -> Result<Vec<T>, PartialError> {
        let mut out = Vec::new();
        loop {
            let at = self.at;
            let n = self.long(what)?;
            if n == 0 {
                return Ok(out);
            }
            if n < 0 {
                self.long(what)?;
            }
            let n = usize::try_from(n.unsigned_abs()).unwrap_or(usize::MAX);
            if n > self.left() {
                return Err(PartialError::Truncated { what, at });
            }
            // Items are at least a byte but may be far bigger in memory: reserve a
            // little, grow with what is actually read.
            out.reserve(n.min(256));
            for _ in 0..n {
                out.push(item(self)?);
            }
        }
    }

    fn arm(&mut self) -> Result<Arm, PartialError> {
        let exposures = self.count("exposures")?;
        let events = self.count("events")?;
        let aggs = self.array("aggs", Reader::agg)?;
        let keys = self.array("sample keys", |r| {
            let v = r.long("sample key")?;
            u32::try_from(v).map_err(|_| PartialError::OutOfRange {
                what: "sample key",
                value: v,
            })
        })?;
        let tau = self.long("sample tau")?;
        let tau = u32::try_from(tau).map_err(|_| PartialError::OutOfRange {
            what: "sample tau",
            value: tau,
        })?;
        let full = self.boolean("sample full")?;
        let units =
            UnitSample::from_parts(CELL_SAMPLE, keys, tau, full).ok_or(PartialError::Sample)?;
        Ok(Arm {
            exposures,
            events,
            aggs,
            units,
        })
    }

    fn agg(&mut self) -> Result<Agg, PartialError> {
        match self.branch("aggs item", 3)? {
            0 => Ok(Agg::Rate {
                num: self.count("num")?,
                den: self.count("den")?,
                units: self.unit_buckets("rate units")?,
            }),
            1 => Ok(Agg::Mean {
                n: self.count("n")?,
                sum: self.double("sum")?,
                sumsq: self.double("sumsq")?,
                units: self.unit_buckets("mean units")?,
            }),
            _ => {
                let hist = match self.branch("hist", 2)? {
                    0 => None,
                    _ => Some(histogram(self.bytes("hist")?)?),
                };
                let units = match self.branch("quantile units", 2)? {
                    0 => None,
                    _ => self.quantile_counts()?,
                };
                Ok(Agg::Quantile { hist, units })
            }
        }
    }

    fn unit_buckets(&mut self, what: &'static str) -> Result<Option<Box<Buckets>>, PartialError> {
        if self.branch(what, 2)? == 0 {
            return Ok(None);
        }
        let side = |r: &mut Self, name| {
            let v = r.array(name, |r| r.double(name))?;
            <[f64; BUCKETS]>::try_from(v).map_err(|v| PartialError::BucketLength {
                what: name,
                len: v.len(),
                expected: BUCKETS,
            })
        };
        let x = side(self, "unit buckets x")?;
        let y = side(self, "unit buckets y")?;
        Ok(Some(Box::new(Buckets { x, y })))
    }

    /// The sparse cells of a quantile's per-unit-bucket table; `None` if there are none.
    fn quantile_counts(&mut self) -> Result<Option<Box<QuantileBuckets>>, PartialError> {
        let cells = self.array("quantile units", |r| {
            let b = r.long("bucket")?;
            let k = r.long("bin")?;
            let c = r.long("count")?;
            let b = usize::try_from(b).ok().filter(|&b| b < Q_BUCKETS).ok_or(
                PartialError::OutOfRange {
                    what: "bucket",
                    value: b,
                },
            )?;
            let k = usize::try_from(k).ok().filter(|&k| k < Q_BINS).ok_or(
                PartialError::OutOfRange {
                    what: "bin",
                    value: k,
                },
            )?;
            let c = u32::try_from(c).map_err(|_| PartialError::OutOfRange {
                what: "count",
                value: c,
            })?;
            Ok((b, k, c))
        })?;
        if cells.is_empty() {
            return Ok(None);
        }
        let mut u = Box::new(QuantileBuckets {
            counts: [[0; Q_BINS]; Q_BUCKETS],
        });
        for (b, k, c) in cells {
            u.counts[b][k] = u.counts[b][k].saturating_add(c);
        }
        Ok(Some(u))
    }
}

/// Reads HdrHistogram's V2 + DEFLATE serialization of a histogram with the bounds of
/// [`new_histogram`]. The header is checked before the deserializer sizes anything by
/// it, and the inflated payload is limited to what such a histogram can need.
fn histogram(raw: &[u8]) -> Result<Box<Histogram<u32>>, PartialError> {
    let err = |m: String| PartialError::Histogram(m);
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let be64 = |b: &[u8], at: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[at..at + 8]);
        u64::from_be_bytes(x)
    };
    if raw.len() < 8 {
        return Err(err(format!(
            "{} bytes, shorter than the V2-deflate header",
            raw.len()
        )));
    }
    if be32(raw, 0) != V2_DEFLATE_COOKIE {
        return Err(err(format!(
            "cookie {:#010x}, expected V2-deflate's {V2_DEFLATE_COOKIE:#010x}",
            be32(raw, 0)
        )));
    }
    if be32(raw, 4) as usize != raw.len() - 8 {
        return Err(err(format!(
            "compressed length {} but {} bytes follow",
            be32(raw, 4),
            raw.len() - 8
        )));
    }
    static MAX_V2: LazyLock<usize> =
        LazyLock::new(|| V2_HEADER + 9 * new_histogram().distinct_values());
    let v2 = miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(&raw[8..], *MAX_V2)
        .map_err(|e| err(format!("inflating: {e} (limit {} bytes)", *MAX_V2)))?;
    if v2.len() < V2_HEADER {
        return Err(err(format!(
            "{} bytes inflated, shorter than the V2 header",
            v2.len()
        )));
    }
    let header = (
        be32(&v2, 0),
        be32(&v2, 4) as usize,
        be32(&v2, 8),
        be32(&v2, 12),
        be64(&v2, 16),
        be64(&v2, 24),
        f64::from_bits(be64(&v2, 32)),
    );
    let expected = (
        V2_COOKIE,
        v2.len() - V2_HEADER,
        0,
        u32::from(HIST_SIGFIG),
        HIST_LOW,
        HIST_HIGH,
        1.0,
    );
    if header != expected {
        return Err(err(format!(
            "V2 header (cookie, payload length, normalizing offset, digits, low, high, ratio) \
             {header:?}, expected {expected:?}"
        )));
    }
    Deserializer::new()
        .deserialize(&mut &v2[..])
        .map(Box::new)
        .map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests;
