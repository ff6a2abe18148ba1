//! Serde for byte buffers as bytes, not as a sequence of numbers: `#[serde(with =
//! "crate::core::bytes_serde")]` on a `Vec<u8>`. In postcard both encode the same way (a length,
//! then the bytes), but decoding a sequence goes byte by byte through the visitor — a 10 MB
//! message body took long enough on a runtime thread to starve the membership driver. As bytes
//! it is one copy.

use serde::de::{Error, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_byte_buf(BytesVisitor)
}

struct BytesVisitor;

/// Most elements reserved up front from a sequence's size hint (the rest grows as read).
const SEQ_RESERVE_MAX: usize = 1 << 20;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    // Formats without bytes (JSON) write a sequence of numbers.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(SEQ_RESERVE_MAX));
        while let Some(b) = seq.next_element()? {
            out.push(b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Plain {
        body: Vec<u8>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Fast {
        #[serde(with = "super")]
        body: Vec<u8>,
    }

    #[test]
    fn the_same_bytes_on_the_wire_both_ways() {
        let body: Vec<u8> = (0..=255).cycle().take(70_000).collect();
        let plain = postcard::to_stdvec(&Plain { body: body.clone() }).unwrap();
        let fast = postcard::to_stdvec(&Fast { body: body.clone() }).unwrap();
        assert_eq!(
            plain, fast,
            "wire compatible with peers of the older encoding"
        );
        let back: Fast = postcard::from_bytes(&plain).unwrap();
        assert_eq!(back.body, body);
        let json = serde_json::to_string(&Fast { body: vec![1, 2] }).unwrap();
        assert_eq!(
            serde_json::from_str::<Fast>(&json).unwrap().body,
            vec![1, 2]
        );
    }
}
