//! Avro object container files (the replay input format): a small reader that hands
//! out whole decompressed blocks so the engine's fast decoder reads datums in place,
//! and a writer used by the simulator, tests and benchmarks. Codecs: `null`, `deflate`.

use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};

use crate::avro::AvroWriter;

const MAGIC: [u8; 4] = [b'O', b'b', b'j', 1];

#[derive(Debug, thiserror::Error)]
pub enum OcfError {
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("not an Avro container file (bad magic)")]
    BadMagic,
    #[error("corrupt container file: {0}")]
    Corrupt(&'static str),
    #[error("unsupported codec {0:?} (null and deflate are supported)")]
    Codec(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Null,
    Deflate,
}

/// Reads a container file block by block.
pub struct OcfReader<R> {
    input: BufReader<R>,
    /// The writer schema (JSON) from the file header.
    pub schema: String,
    codec: Codec,
    sync: [u8; 16],
    raw: Vec<u8>,
    block: Vec<u8>,
}

fn read_long<R: Read>(r: &mut R) -> Result<Option<i64>, OcfError> {
    let mut value: u64 = 0;
    let mut shift = 0;
    let mut byte = [0u8; 1];
    loop {
        if r.read(&mut byte)? == 0 {
            return if shift == 0 {
                Ok(None)
            } else {
                Err(OcfError::Corrupt("truncated varint"))
            };
        }
        value |= u64::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            return Ok(Some(((value >> 1) as i64) ^ -((value & 1) as i64)));
        }
        shift += 7;
        if shift > 63 {
            return Err(OcfError::Corrupt("varint too long"));
        }
    }
}

fn need_long<R: Read>(r: &mut R) -> Result<i64, OcfError> {
    read_long(r)?.ok_or(OcfError::Corrupt("unexpected end of file"))
}

fn read_bytes<R: Read>(r: &mut R) -> Result<Vec<u8>, OcfError> {
    let len = usize::try_from(need_long(r)?).map_err(|_| OcfError::Corrupt("negative length"))?;
    if len > 64 << 20 {
        return Err(OcfError::Corrupt("header value larger than 64 MiB"));
    }
    let mut v = vec![0; len];
    r.read_exact(&mut v)?;
    Ok(v)
}

impl<R: Read> OcfReader<R> {
    pub fn new(input: R) -> Result<OcfReader<R>, OcfError> {
        let mut input = BufReader::with_capacity(1 << 20, input);
        let mut magic = [0u8; 4];
        input
            .read_exact(&mut magic)
            .map_err(|_| OcfError::BadMagic)?;
        if magic != MAGIC {
            return Err(OcfError::BadMagic);
        }
        let mut meta = HashMap::new();
        loop {
            let mut count = need_long(&mut input)?;
            if count == 0 {
                break;
            }
            if count < 0 {
                count = -count;
                need_long(&mut input)?;
            }
            for _ in 0..count {
                let k = String::from_utf8(read_bytes(&mut input)?)
                    .map_err(|_| OcfError::Corrupt("metadata key not UTF-8"))?;
                meta.insert(k, read_bytes(&mut input)?);
            }
        }
        let schema = meta
            .remove("avro.schema")
            .ok_or(OcfError::Corrupt("no avro.schema in header"))?;
        let schema =
            String::from_utf8(schema).map_err(|_| OcfError::Corrupt("schema not UTF-8"))?;
        let codec = match meta
            .get("avro.codec")
            .map(|c| String::from_utf8_lossy(c).into_owned())
        {
            None => Codec::Null,
            Some(c) if c == "null" => Codec::Null,
            Some(c) if c == "deflate" => Codec::Deflate,
            Some(c) => return Err(OcfError::Codec(c)),
        };
        let mut sync = [0u8; 16];
        input.read_exact(&mut sync)?;
        Ok(OcfReader {
            input,
            schema,
            codec,
            sync,
            raw: Vec::new(),
            block: Vec::new(),
        })
    }

    /// The next block: its object count and the datums back to back; `None` at the end.
    pub fn next_block(&mut self) -> Result<Option<(u64, &[u8])>, OcfError> {
        let Some(count) = read_long(&mut self.input)? else {
            return Ok(None);
        };
        let count = u64::try_from(count).map_err(|_| OcfError::Corrupt("negative block count"))?;
        let size = usize::try_from(need_long(&mut self.input)?)
            .map_err(|_| OcfError::Corrupt("negative block size"))?;
        if size > 256 << 20 {
            return Err(OcfError::Corrupt("block larger than 256 MiB"));
        }
        self.raw.resize(size, 0);
        self.input.read_exact(&mut self.raw)?;
        let mut sync = [0u8; 16];
        self.input.read_exact(&mut sync)?;
        if sync != self.sync {
            return Err(OcfError::Corrupt("sync marker mismatch"));
        }
        let data = match self.codec {
            Codec::Null => &self.raw[..],
            Codec::Deflate => {
                self.block = miniz_oxide::inflate::decompress_to_vec(&self.raw)
                    .map_err(|_| OcfError::Corrupt("bad deflate block"))?;
                &self.block[..]
            }
        };
        Ok(Some((count, data)))
    }
}

/// Writes a container file; datums are appended already encoded.
pub struct OcfWriter<W: Write> {
    out: W,
    sync: [u8; 16],
    codec: Codec,
    block: Vec<u8>,
    count: u64,
    /// Objects per block.
    pub block_objects: u64,
}

impl<W: Write> OcfWriter<W> {
    pub fn new(
        mut out: W,
        schema_json: &str,
        codec: Codec,
        sync: [u8; 16],
    ) -> io::Result<OcfWriter<W>> {
        let codec_name = if codec == Codec::Deflate {
            "deflate"
        } else {
            "null"
        };
        let meta = [("avro.schema", schema_json), ("avro.codec", codec_name)];
        let mut h = AvroWriter::default();
        h.0.extend_from_slice(&MAGIC);
        h.block(&meta, |h, (k, v)| {
            h.string(k);
            h.string(v);
        });
        h.0.extend_from_slice(&sync);
        let h = h.0;
        out.write_all(&h)?;
        Ok(OcfWriter {
            out,
            sync,
            codec,
            block: Vec::new(),
            count: 0,
            block_objects: 4096,
        })
    }

    /// Appends one encoded datum (no single-object header).
    pub fn append_datum(&mut self, datum: &[u8]) -> io::Result<()> {
        self.block.extend_from_slice(datum);
        self.count += 1;
        if self.count >= self.block_objects {
            self.flush_block()?;
        }
        Ok(())
    }

    fn flush_block(&mut self) -> io::Result<()> {
        if self.count == 0 {
            return Ok(());
        }
        let data = match self.codec {
            Codec::Null => std::mem::take(&mut self.block),
            Codec::Deflate => miniz_oxide::deflate::compress_to_vec(&self.block, 6),
        };
        let mut h = AvroWriter::default();
        h.long(self.count as i64);
        h.long(data.len() as i64);
        self.out.write_all(&h.0)?;
        self.out.write_all(&data)?;
        self.out.write_all(&self.sync)?;
        self.block.clear();
        self.count = 0;
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.flush_block()?;
        self.out.flush()?;
        Ok(self.out)
    }
}
