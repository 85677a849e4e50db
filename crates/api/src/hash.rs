//! `NameHash`: FNV-1a 32-bit over UTF-8 bytes, as 8 lowercase hex digits (upstream-core §4).
//! Label values, Service selectors and NetworkPolicy selectors depend on it bit for bit.

const FNV_OFFSET_BASIS: u32 = 2_166_136_261;
const FNV_PRIME: u32 = 16_777_619;

/// FNV-1a 32-bit of `s`'s UTF-8 bytes.
pub fn fnv1a32(s: &str) -> u32 {
    s.bytes().fold(FNV_OFFSET_BASIS, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

/// The hash used in every agent-sandbox hash label: `fnv1a32(s)` as 8 zero-padded lowercase hex
/// digits, most significant nibble first.
pub fn name_hash(s: &str) -> String {
    format!("{:08x}", fnv1a32(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference FNV-1a written independently of the fold above, byte by byte.
    fn reference(bytes: &[u8]) -> u32 {
        let mut h: u64 = 0x811c_9dc5;
        for b in bytes {
            h ^= u64::from(*b);
            h = (h * 0x0100_0193) % (1 << 32);
        }
        h as u32
    }

    #[test]
    fn empty_string_is_the_offset_basis() {
        assert_eq!(name_hash(""), "811c9dc5");
    }

    #[test]
    fn published_fnv1a_vectors() {
        // Vectors from the FNV reference test suite (FNV-1a, 32 bit).
        assert_eq!(fnv1a32("a"), 0xe40c292c);
        assert_eq!(fnv1a32("foobar"), 0xbf9cf968);
    }

    #[test]
    fn sandbox_names() {
        let long = "a".repeat(63);
        for name in ["my-sandbox", long.as_str(), "sandbox-ü-日本", "x"] {
            assert_eq!(
                name_hash(name),
                format!("{:08x}", reference(name.as_bytes())),
                "{name}"
            );
            assert_eq!(name_hash(name).len(), 8);
        }
        // Literal values computed with an independent implementation.
        assert_eq!(name_hash("my-sandbox"), "374de8f5");
        assert_eq!(name_hash(&long), "2469b9e6");
        assert_eq!(name_hash("sandbox-ü-日本"), "4312da13");
    }

    #[test]
    fn small_hashes_are_zero_padded() {
        // Find a short input whose hash has a leading zero nibble and check the padding.
        let name = (0..10_000)
            .map(|i| format!("n{i}"))
            .find(|n| fnv1a32(n) < 0x1000_0000)
            .expect("some input hashes below 0x10000000");
        let h = name_hash(&name);
        assert!(h.starts_with('0'), "{name} -> {h}");
        assert_eq!(h.len(), 8);
    }
}
