//! The durable form of a [`DirtyMap`]: a small versioned binary file with a
//! BLAKE3 checksum, written atomically.
//!
//! ```text
//! magic "MCDIRTY\n" | version u32 | flags u32 | body length u64 | body | blake3(all before) 32 B
//! body: zone_size u64, last_seq u64, has_horizon u8, horizon u64,
//!       files u64 × { path, runs u64 × {start, end, seq: u64}, truncs u32 × {size, seq: u64} },
//!       records u64 × { seq u64, kind u8, path, has_path2 u8, [path2] }
//! path: length u32 + bytes; integers little-endian; zones as zone numbers.
//! ```
//! Flag bit 0 says the writer stopped cleanly; without it the map is
//! distrusted (the daemon saves a "tracking" marker that way at start).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::log::{Kind, Record};
use super::zones::Zones;
use super::{DirtyMap, File};
use crate::error::{MirrorError, Result};
use crate::wire::validate_path;

const MAGIC: &[u8; 8] = b"MCDIRTY\n";
const VERSION: u32 = 1;
const CLEAN: u32 = 1;
const HEAD: usize = 24;
const SUM: usize = 32;

impl DirtyMap {
    /// Writes the map to `file` atomically: a temporary file beside it,
    /// fsync, rename over `file`, fsync of the directory. `clean` marks a
    /// clean stop; a map loaded distrusted stays distrusted.
    ///
    /// # Errors
    /// [`MirrorError::Io`] from any step; the temporary file is removed.
    pub fn save(&self, file: &Path, clean: bool) -> Result<()> {
        let bytes = self.encode(clean && self.clean);
        let name = file.file_name().ok_or_else(|| {
            MirrorError::InvalidArgument(format!("{}: not a file name", file.display()))
        })?;
        let dir = match file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp{}", std::process::id()));
        let tmp = dir.join(tmp_name);
        let written = (|| -> std::io::Result<()> {
            let mut out = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            out.write_all(&bytes)?;
            out.sync_all()?;
            fs::rename(&tmp, file)?;
            fs::File::open(dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        Ok(written?)
    }

    /// Reads a map saved by [`DirtyMap::save`]; [`DirtyMap::clean`] tells
    /// whether it was saved at a clean stop.
    ///
    /// # Errors
    /// [`MirrorError::Io`] if unreadable (`NotFound` if missing);
    /// [`MirrorError::CorruptFile`] naming the file and the defect.
    pub fn load(file: &Path) -> Result<DirtyMap> {
        let bytes = fs::read(file)?;
        decode(&bytes).map_err(|reason| MirrorError::CorruptFile {
            path: file.display().to_string(),
            what: "dirty map",
            reason,
        })
    }

    fn encode(&self, clean: bool) -> Vec<u8> {
        let mut b = Vec::with_capacity(256);
        b.extend_from_slice(MAGIC);
        put_u32(&mut b, VERSION);
        put_u32(&mut b, if clean { CLEAN } else { 0 });
        put_u64(&mut b, 0); // body length, patched below
        put_u64(&mut b, self.zone_size());
        put_u64(&mut b, self.last_seq);
        b.push(u8::from(self.horizon.is_some()));
        put_u64(&mut b, self.horizon.unwrap_or(0));
        put_u64(&mut b, self.files.len() as u64);
        for id in self.by_path.values() {
            let f = &self.files[id];
            put_bytes(&mut b, &f.path);
            put_u64(&mut b, f.zones.len() as u64);
            for (start, end, seq) in f.zones.runs() {
                for v in [start, end, seq] {
                    put_u64(&mut b, v);
                }
            }
            put_u32(
                &mut b,
                u32::try_from(f.truncs.len()).expect("few truncations"),
            );
            for &(size, seq) in &f.truncs {
                put_u64(&mut b, size);
                put_u64(&mut b, seq);
            }
        }
        put_u64(&mut b, self.log.len() as u64);
        for r in self.log.iter() {
            put_u64(&mut b, r.seq);
            b.push(r.kind.code());
            put_bytes(&mut b, &r.path);
            b.push(u8::from(r.path2.is_some()));
            if let Some(p2) = &r.path2 {
                put_bytes(&mut b, p2);
            }
        }
        let body = (b.len() - HEAD) as u64;
        b[16..HEAD].copy_from_slice(&body.to_le_bytes());
        let sum = blake3::hash(&b);
        b.extend_from_slice(sum.as_bytes());
        b
    }
}

fn decode(bytes: &[u8]) -> std::result::Result<DirtyMap, String> {
    if bytes.len() < HEAD + SUM || &bytes[..8] != MAGIC {
        return Err("not a dirty map file (bad magic or too short)".into());
    }
    let mut head = Reader(&bytes[8..HEAD]);
    let version = head.u32()?;
    if version != VERSION {
        return Err(format!(
            "format version {version}, this build reads {VERSION}"
        ));
    }
    let flags = head.u32()?;
    let body_len = head.u64()?;
    if usize::try_from(body_len).ok() != Some(bytes.len() - HEAD - SUM) {
        return Err(format!(
            "length {} does not match the {body_len}-byte body it announces (truncated?)",
            bytes.len()
        ));
    }
    let (data, sum) = bytes.split_at(bytes.len() - SUM);
    if blake3::hash(data).as_bytes() != sum {
        return Err("checksum mismatch".into());
    }
    if flags & !CLEAN != 0 {
        return Err(format!("unknown flags {flags:#x}"));
    }
    let mut r = Reader(&data[HEAD..]);
    let mut map = DirtyMap::new(r.u64()?).map_err(|e| e.to_string())?;
    map.clean = flags & CLEAN != 0;
    map.last_seq = r.u64()?;
    let has_horizon = r.u8()? != 0;
    let horizon = r.u64()?;
    map.horizon = has_horizon.then_some(horizon);
    let zone_limit = (u64::MAX >> map.zone_shift) + 1;
    for _ in 0..r.u64()? {
        let path = r.path()?;
        if map.by_path.contains_key(&path) {
            return Err(format!("{} listed twice", String::from_utf8_lossy(&path)));
        }
        let mut runs = Vec::new();
        let mut prev_end = 0;
        for _ in 0..r.u64()? {
            let (start, end, seq) = (r.u64()?, r.u64()?, r.u64()?);
            if start < prev_end || start >= end || end > zone_limit || seq > map.last_seq {
                return Err(format!(
                    "bad zone run in {}",
                    String::from_utf8_lossy(&path)
                ));
            }
            prev_end = end;
            runs.push((start, end, seq));
        }
        let mut truncs: Vec<(u64, u64)> = Vec::new();
        for _ in 0..r.u32()? {
            let t = (r.u64()?, r.u64()?);
            if truncs.last().is_some_and(|&(s, q)| s >= t.0 || q >= t.1) || t.1 > map.last_seq {
                return Err(format!(
                    "bad truncation in {}",
                    String::from_utf8_lossy(&path)
                ));
            }
            truncs.push(t);
        }
        let id = map.file_id(&path);
        for &(_, seq) in &truncs {
            map.led.index.insert((seq, id, super::zones::TRUNC_SLOT));
        }
        let zones = Zones::from_runs(&mut map.led, id, &runs);
        map.files.insert(
            id,
            File {
                path,
                zones,
                truncs,
            },
        );
    }
    let mut prev_seq = 0;
    for _ in 0..r.u64()? {
        let seq = r.u64()?;
        let kind = Kind::from_code(r.u8()?).ok_or("unknown changelog kind")?;
        let path = r.path()?;
        let path2 = if r.u8()? != 0 { Some(r.bytes()?) } else { None };
        if seq < prev_seq || seq > map.last_seq || kind.has_two_paths() != path2.is_some() {
            return Err("bad changelog record".into());
        }
        prev_seq = seq;
        map.log.push(Record {
            seq,
            kind,
            path,
            path2,
        });
    }
    if !r.0.is_empty() {
        return Err(format!("{} stray bytes after the changelog", r.0.len()));
    }
    Ok(map)
}

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    put_u32(b, u32::try_from(v.len()).expect("paths are short"));
    b.extend_from_slice(v);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> std::result::Result<&[u8], String> {
        if self.0.len() < n {
            return Err("truncated body".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn bytes(&mut self) -> std::result::Result<Vec<u8>, String> {
        let len = self.u32()? as usize;
        Ok(self.take(len)?.to_vec())
    }
    fn path(&mut self) -> std::result::Result<Vec<u8>, String> {
        let p = self.bytes()?;
        validate_path(&p).map_err(|e| e.to_string())?;
        Ok(p)
    }
}
