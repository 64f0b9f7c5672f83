//! The Confluent wire format: a zero byte, a big-endian 4-byte schema id, then the payload
//! (for Protobuf, first the indexes of the message type within its schema).

use super::DecodeError;

/// The id a schema registry gave a writer schema.
pub type SchemaId = u32;

/// The schema id and body of a framed payload.
pub(super) fn frame(payload: &[u8]) -> Result<(SchemaId, &[u8]), DecodeError> {
    match payload {
        [0, a, b, c, d, body @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        [first, ..] if *first != 0 => Err(DecodeError::WrongMagicByte { byte: *first }),
        _ => Err(DecodeError::Truncated {
            detail: format!(
                "{} bytes, shorter than the 5-byte schema-registry header",
                payload.len()
            ),
        }),
    }
}

/// A little-endian base-128 varint.
pub(super) fn varint(buf: &mut &[u8]) -> Result<u64, DecodeError> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let Some((&byte, rest)) = buf.split_first() else {
            return Err(DecodeError::Truncated {
                detail: "the payload ends inside a number".into(),
            });
        };
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeError::BadPayload {
        detail: "a number longer than 10 bytes".into(),
    })
}

/// A zigzag-encoded varint (Avro's `int` and `long`, Confluent's message indexes).
pub(super) fn zigzag(buf: &mut &[u8]) -> Result<i64, DecodeError> {
    let n = varint(buf)?;
    Ok(((n >> 1) as i64) ^ -((n & 1) as i64))
}

/// The next `len` bytes.
pub(super) fn take<'a>(buf: &mut &'a [u8], len: usize) -> Result<&'a [u8], DecodeError> {
    if buf.len() < len {
        return Err(DecodeError::Truncated {
            detail: format!("{len} bytes expected, {} left", buf.len()),
        });
    }
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    Ok(head)
}

/// Message indexes nested deeper than this are refused.
pub(super) const MAX_INDEXES: usize = 8;

/// The path to a message type in its schema, without a heap allocation per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MessageIndexes {
    path: [i32; MAX_INDEXES],
    len: usize,
}

impl MessageIndexes {
    pub(super) fn as_slice(&self) -> &[i32] {
        &self.path[..self.len]
    }
}

/// The message indexes of a Confluent Protobuf payload: the path to the message type in its
/// schema (`[0]`, written as a single zero, is the first top-level message).
pub(super) fn message_indexes(buf: &mut &[u8]) -> Result<MessageIndexes, DecodeError> {
    let mut indexes = MessageIndexes {
        path: [0; MAX_INDEXES],
        len: 1,
    };
    let count = zigzag(buf)?;
    if count == 0 {
        return Ok(indexes);
    }
    let len = usize::try_from(count)
        .ok()
        .filter(|n| (1..=MAX_INDEXES).contains(n))
        .ok_or_else(|| DecodeError::BadPayload {
            detail: format!("{count} message indexes"),
        })?;
    for slot in &mut indexes.path[..len] {
        let i = zigzag(buf)?;
        *slot = i32::try_from(i).map_err(|_| DecodeError::BadPayload {
            detail: format!("message index {i}"),
        })?;
    }
    indexes.len = len;
    Ok(indexes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_into_schema_id_and_body() {
        assert_eq!(frame(&[0, 0, 0, 1, 2, 9, 9]), Ok((258, &[9u8, 9][..])));
        assert_eq!(frame(&[0, 0, 0, 0, 7]), Ok((7, &[][..])));
        assert_eq!(
            frame(&[1, 0, 0, 0, 7]).unwrap_err().kind(),
            "wrong_magic_byte"
        );
        assert_eq!(frame(b"{\"a\":1}").unwrap_err().kind(), "wrong_magic_byte");
        assert_eq!(frame(&[0, 0, 1]).unwrap_err().kind(), "truncated");
        assert_eq!(frame(&[]).unwrap_err().kind(), "truncated");
    }

    #[test]
    fn zigzag_varints_round_trip_and_overlong_ones_are_rejected() {
        for (bytes, value) in [
            (&[0u8][..], 0i64),
            (&[1], -1),
            (&[2], 1),
            (&[0xac, 0x02], 150),
            (
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                i64::MIN,
            ),
        ] {
            let mut buf = bytes;
            assert_eq!(zigzag(&mut buf), Ok(value));
            assert!(buf.is_empty());
        }
        let mut overlong: &[u8] = &[0x80; 11];
        assert_eq!(zigzag(&mut overlong).unwrap_err().kind(), "bad_payload");
        let mut cut: &[u8] = &[0x80];
        assert_eq!(zigzag(&mut cut).unwrap_err().kind(), "truncated");
    }

    #[test]
    fn message_indexes_have_a_short_form_for_the_first_message() {
        let read = |bytes: &[u8]| message_indexes(&mut &bytes[..]).map(|i| i.as_slice().to_vec());
        assert_eq!(read(&[0]), Ok(vec![0]));
        // Two indexes, [1, 0]: zigzag 2, 2, 0.
        assert_eq!(read(&[4, 2, 0]), Ok(vec![1, 0]));
        assert!(read(&[1]).is_err());
        assert!(read(&[18]).is_err(), "nine indexes");
    }
}
