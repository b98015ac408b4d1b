//! TensorBoard event files for scalars, written without TensorFlow: TFRecord framing (length, masked
//! CRC-32C of the length, the record, masked CRC-32C of the record) around `Event` protobufs.
//!
//! Only the fields scalars need are encoded (`Event.wall_time = 1`, `step = 2`, `file_version = 3`,
//! `summary = 5`; `Summary.value = 1`; `Value.tag = 1`, `simple_value = 2`), by hand, as the wire
//! format is a few lines for them. [`read_scalars`] reads files back, checking every CRC.

use std::io::Write;
use std::path::{Path, PathBuf};

/// CRC-32C (Castagnoli), the checksum TFRecord uses.
pub fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0x82f6_3b78 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TFRecord's masked CRC: rotated and offset so a CRC of data that holds CRCs stays well mixed.
pub fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    varint(out, u64::from(field << 3 | 2));
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// One `Event` with scalars `(tag, value)` at `step` (or the header event with `file_version`).
fn event(
    wall_time: f64,
    step: i64,
    scalars: &[(String, f32)],
    file_version: Option<&str>,
) -> Vec<u8> {
    let mut ev = Vec::new();
    ev.push(1 << 3 | 1);
    ev.extend_from_slice(&wall_time.to_le_bytes());
    // proto3 leaves default values out; TensorFlow's header event has no step.
    if step != 0 {
        ev.push(2 << 3);
        varint(&mut ev, step as u64);
    }
    if let Some(v) = file_version {
        bytes_field(&mut ev, 3, v.as_bytes());
    }
    if !scalars.is_empty() {
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let mut val = Vec::new();
            bytes_field(&mut val, 1, tag.as_bytes());
            val.push(2 << 3 | 5);
            val.extend_from_slice(&value.to_le_bytes());
            bytes_field(&mut summary, 1, &val);
        }
        bytes_field(&mut ev, 5, &summary);
    }
    ev
}

fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// Seconds since the Unix epoch (0 on a clock set before it).
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// An open event file in a log directory (one per process, as TensorFlow's writers do).
pub struct EventWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<unix time>.rdrop.<pid>` with its header event.
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let t = now();
        let path = dir.join(format!(
            "events.out.tfevents.{}.rdrop.{}",
            t as u64,
            std::process::id()
        ));
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&record(&event(t, 0, &[], Some("brain.Event:2"))))?;
        Ok(EventWriter { file, path })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends scalars at `step` and flushes (TensorBoard reads files while they grow).
    pub fn scalars(&mut self, step: u64, scalars: &[(String, f32)]) -> std::io::Result<()> {
        self.file
            .write_all(&record(&event(now(), step as i64, scalars, None)))?;
        self.file.flush()
    }
}

/// One scalar read back: `(tag, step, value)`.
pub type Scalar = (String, i64, f32);

fn read_varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

/// One protobuf field: number, wire type, the value (varint and fixed) or the bytes (length-delimited).
type Field<'a> = (u32, u8, u64, &'a [u8]);

/// The fields of a message, in order.
fn fields(b: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let key = read_varint(b, &mut i)?;
        let (field, wire) = ((key >> 3) as u32, (key & 7) as u8);
        match wire {
            0 => out.push((field, wire, read_varint(b, &mut i)?, &b[0..0])),
            1 => {
                let v = u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?);
                i += 8;
                out.push((field, wire, v, &b[0..0]));
            }
            2 => {
                let n = read_varint(b, &mut i)? as usize;
                out.push((field, wire, 0, b.get(i..i + n)?));
                i += n;
            }
            5 => {
                let v = u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?);
                i += 4;
                out.push((field, wire, u64::from(v), &b[0..0]));
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Reads every scalar of an event file, checking each record's framing and both CRCs.
pub fn read_scalars(path: &Path) -> Result<Vec<Scalar>, String> {
    let b = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    let mut i = 0;
    let mut n = 0;
    while i < b.len() {
        let bad = |what: &str| format!("{}: record {n}: {what}", path.display());
        let len_bytes = b.get(i..i + 8).ok_or_else(|| bad("truncated length"))?;
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(
            b.get(i + 8..i + 12)
                .ok_or_else(|| bad("truncated"))?
                .try_into()
                .unwrap(),
        );
        if crc != masked_crc(len_bytes) {
            return Err(bad("length CRC mismatch"));
        }
        let data = b
            .get(i + 12..i + 12 + len)
            .ok_or_else(|| bad("truncated data"))?;
        let dcrc = u32::from_le_bytes(
            b.get(i + 12 + len..i + 16 + len)
                .ok_or_else(|| bad("truncated"))?
                .try_into()
                .unwrap(),
        );
        if dcrc != masked_crc(data) {
            return Err(bad("data CRC mismatch"));
        }
        let ev = fields(data).ok_or_else(|| bad("bad protobuf"))?;
        let step = ev.iter().find(|f| f.0 == 2).map_or(0, |f| f.2 as i64);
        for (_, _, _, summary) in ev.iter().filter(|f| f.0 == 5) {
            for (_, _, _, value) in fields(summary).ok_or_else(|| bad("bad summary"))? {
                let v = fields(value).ok_or_else(|| bad("bad value"))?;
                let tag = v
                    .iter()
                    .find(|f| f.0 == 1)
                    .map(|f| String::from_utf8_lossy(f.3).into_owned());
                let x = v
                    .iter()
                    .find(|f| f.0 == 2 && f.1 == 5)
                    .map(|f| f32::from_bits(f.2 as u32));
                if let (Some(tag), Some(x)) = (tag, x) {
                    out.push((tag, step, x));
                }
            }
        }
        i += 16 + len;
        n += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_published_check_values() {
        // RFC 3720 (iSCSI) B.4 and the CRC catalogue's check value for CRC-32/ISCSI.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
    }

    #[test]
    fn header_record_starts_like_tensorflows() {
        // Every tfevents file TensorFlow or tensorboardX writes starts with these 12 bytes: the
        // 24-byte header event's length and its masked CRC (`\x18\0\0\0\0\0\0\0\xa3\x7fK"`).
        let rec = record(&event(0.0, 0, &[], Some("brain.Event:2")));
        assert_eq!(
            &rec[..12],
            &[0x18, 0, 0, 0, 0, 0, 0, 0, 0xa3, 0x7f, 0x4b, 0x22]
        );
    }

    #[test]
    fn scalars_round_trip_and_corruption_is_caught() {
        let d = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(d.path()).unwrap();
        w.scalars(5, &[("train/ce".into(), 4.25), ("train/lr".into(), 1e-3)])
            .unwrap();
        w.scalars(10, &[("valid/bleu".into(), 31.5)]).unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        let got = read_scalars(&path).unwrap();
        assert_eq!(
            got,
            vec![
                ("train/ce".to_string(), 5, 4.25),
                ("train/lr".to_string(), 5, 1e-3),
                ("valid/bleu".to_string(), 10, 31.5)
            ]
        );
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 6;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(read_scalars(&path).unwrap_err().contains("CRC"));
    }
}
