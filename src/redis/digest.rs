//! The digests keys and ids are made of.

use md5::{Digest, Md5};

/// Lowercase hex of MD5 over a length-prefixed encoding of the parts, so
/// `"ab"+"c"` and `"a"+"bc"` never collide.
pub fn md5_of_parts(parts: &[&str]) -> String {
    hex::encode(md5_of_parts_bytes(parts))
}

/// The raw 16 bytes of [`md5_of_parts`].
pub fn md5_of_parts_bytes(parts: &[&str]) -> [u8; 16] {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// Lowercase hex of MD5 of some bytes.
pub fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(Md5::digest(bytes))
}

/// The SHA-1 Redis names a Lua script by, for `EVALSHA`.
pub fn script_sha(script: &str) -> String {
    sha1_smol::Sha1::from(script).digest().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefixing_prevents_collisions() {
        assert_ne!(md5_of_parts(&["ab", "c"]), md5_of_parts(&["a", "bc"]));
        // MD5 of 00..01 'a' 00..01 'b' (each part after its 8-byte big-endian length).
        assert_eq!(
            md5_of_parts(&["a", "b"]),
            "3e8f48e6b9bd50eb7c4a08564eea0ede"
        );
        assert_eq!(
            md5_of_parts_bytes(&["a", "b"]).to_vec(),
            hex::decode("3e8f48e6b9bd50eb7c4a08564eea0ede").unwrap()
        );
        assert_eq!(md5_of_parts(&["a"]).len(), 32);
    }

    #[test]
    fn digests_match_known_values() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        // `redis-cli SCRIPT LOAD "return 1"` answers this SHA.
        assert_eq!(
            script_sha("return 1"),
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
    }
}
