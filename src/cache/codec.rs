//! Compact storage of embeddings in Redis: a 4-byte tag, the dimension, then
//! little-endian `f32`s (a 1,536-d vector is 6 KiB, not ~30 KiB of JSON).

use crate::redis::script::{Arg, Script, Value};

const TAG: &[u8; 4] = b"EMB1";

pub fn encode_embedding(vector: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + vector.len() * 4);
    out.extend_from_slice(TAG);
    out.extend_from_slice(&(vector.len() as u32).to_le_bytes());
    for v in vector {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// `None` for anything that is not a well-formed encoding (treated as a miss).
pub fn decode_embedding(bytes: &[u8]) -> Option<Vec<f32>> {
    let rest = bytes.strip_prefix(TAG)?;
    let (len, data) = rest.split_at_checked(4)?;
    let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
    if data.len() != len * 4 || len == 0 {
        return None;
    }
    Some(
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
    )
}

/// Stores a batch of embeddings with one TTL, in one round trip.
pub struct StoreEmbeddings<'a> {
    /// Each vector's key ([`crate::redis::keys::embedding`]).
    pub keys: Vec<&'a str>,
    pub vectors: &'a [Vec<f32>],
    pub ttl_seconds: u64,
}

impl Script for StoreEmbeddings<'_> {
    const SOURCE: &'static str = r#"
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[i + 1], 'EX', ARGV[1])
end
return #KEYS
"#;
    type Reply = ();

    fn keys(&self) -> Vec<String> {
        self.keys.iter().map(|key| key.to_string()).collect()
    }

    /// The TTL, then each vector, encoded, in the keys' order.
    fn args(&self) -> Vec<Arg> {
        std::iter::once(Arg::from(self.ttl_seconds))
            .chain(self.vectors.iter().map(|v| Arg::from(encode_embedding(v))))
            .collect()
    }

    fn parse(&self, _: Vec<Value>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_exactly() {
        let v = vec![0.1f32, -2.5, 3.0e-8, f32::MAX];
        let bytes = encode_embedding(&v);
        assert_eq!(bytes.len(), 8 + 16);
        assert_eq!(decode_embedding(&bytes), Some(v));
    }

    #[test]
    fn garbage_is_a_miss() {
        assert_eq!(decode_embedding(b""), None);
        assert_eq!(decode_embedding(b"EMB1\x02\x00\x00\x00abc"), None);
        assert_eq!(decode_embedding(b"[0.1, 0.2]"), None);
    }
}
