//! The few protobuf messages etcd stores in its buckets, decoded by hand: they are small and
//! fixed, and a strict decoder doubles as a corruption detector.

/// Wire values of one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed64(u64),
    Fixed32(u32),
}

/// Reads a base-128 varint at `*pos`.
pub fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let Some(&b) = buf.get(*pos) else { return Err("truncated varint".into()) };
        *pos += 1;
        if shift == 63 && b > 1 {
            return Err("varint overflows 64 bits".into());
        }
        v |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

/// Calls `f(field_number, value)` for every field of a message.
pub fn for_each_field<'a>(
    buf: &'a [u8],
    mut f: impl FnMut(u32, Value<'a>) -> Result<(), String>,
) -> Result<(), String> {
    let mut pos = 0;
    while pos < buf.len() {
        let tag = read_varint(buf, &mut pos)?;
        let field = (tag >> 3) as u32;
        if field == 0 || tag >> 3 > u32::MAX as u64 >> 3 {
            return Err(format!("invalid field number in tag {tag}"));
        }
        let value = match tag & 7 {
            0 => Value::Varint(read_varint(buf, &mut pos)?),
            1 => {
                let b = buf.get(pos..pos + 8).ok_or("truncated fixed64")?;
                pos += 8;
                Value::Fixed64(u64::from_le_bytes(b.try_into().unwrap()))
            }
            2 => {
                let len = read_varint(buf, &mut pos)?;
                let end = pos
                    .checked_add(len as usize)
                    .filter(|&e| e <= buf.len() && len <= usize::MAX as u64);
                let end =
                    end.ok_or_else(|| format!("field {field}: length {len} runs past the end"))?;
                let b = &buf[pos..end];
                pos = end;
                Value::Bytes(b)
            }
            5 => {
                let b = buf.get(pos..pos + 4).ok_or("truncated fixed32")?;
                pos += 4;
                Value::Fixed32(u32::from_le_bytes(b.try_into().unwrap()))
            }
            w => return Err(format!("field {field}: unsupported wire type {w}")),
        };
        f(field, value)?;
    }
    Ok(())
}

/// `mvccpb.KeyValue`: one version of one user key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyValue<'a> {
    pub key: &'a [u8],
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub value: &'a [u8],
    pub lease: i64,
}

impl<'a> KeyValue<'a> {
    pub fn decode(buf: &'a [u8]) -> Result<KeyValue<'a>, String> {
        let mut kv = KeyValue::default();
        for_each_field(buf, |field, value| {
            match (field, value) {
                (1, Value::Bytes(b)) => kv.key = b,
                (2, Value::Varint(v)) => kv.create_revision = v as i64,
                (3, Value::Varint(v)) => kv.mod_revision = v as i64,
                (4, Value::Varint(v)) => kv.version = v as i64,
                (5, Value::Bytes(b)) => kv.value = b,
                (6, Value::Varint(v)) => kv.lease = v as i64,
                (f, v) => return Err(format!("unexpected field {f} ({v:?}) in a KeyValue")),
            }
            Ok(())
        })?;
        Ok(kv)
    }
}

/// `leasepb.Lease` as stored in the `lease` bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub ttl: i64,
    pub remaining_ttl: i64,
}

impl Lease {
    pub fn decode(buf: &[u8]) -> Result<Lease, String> {
        let mut lease = Lease::default();
        for_each_field(buf, |field, value| {
            match (field, value) {
                (1, Value::Varint(v)) => lease.id = v as i64,
                (2, Value::Varint(v)) => lease.ttl = v as i64,
                (3, Value::Varint(v)) => lease.remaining_ttl = v as i64,
                (f, v) => return Err(format!("unexpected field {f} ({v:?}) in a Lease")),
            }
            Ok(())
        })?;
        Ok(lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_tombstone_and_a_full_kv() {
        let tomb = KeyValue::decode(&[0x0a, 0x02, b'k', b'2']).unwrap();
        assert_eq!(tomb.key, b"k2");
        assert_eq!(tomb.mod_revision, 0);
        let full =
            [0x0a, 0x01, b'a', 0x10, 0x05, 0x18, 0x07, 0x20, 0x02, 0x2a, 0x01, b'x', 0x30, 0x09];
        let kv = KeyValue::decode(&full).unwrap();
        assert_eq!(
            (kv.create_revision, kv.mod_revision, kv.version, kv.value, kv.lease),
            (5, 7, 2, &b"x"[..], 9)
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(KeyValue::decode(&[0x0a, 0x05, b'a']).is_err());
        assert!(KeyValue::decode(&[0x80]).is_err());
        assert!(KeyValue::decode(&[0x3a, 0x00]).is_err());
        assert!(read_varint(&[0xff; 11], &mut 0).is_err());
    }
}
