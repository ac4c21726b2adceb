//! A hasher for the connection's map of streams, keyed by stream identifier.
//!
//! Every frame and every send looks a stream up (five lookups per request and its response
//! in `hbone`'s `round_trip` bench), and the standard SipHash costs about 120 instructions
//! per lookup there. SipHash guards against keys chosen to collide; stream identifiers are
//! chosen by the peer, but they must only grow and the map holds at most the open streams
//! plus those reset and still held (both bounded by the concurrency limit), so the worst a
//! peer can force is a probe over a few hundred entries.

use std::hash::{BuildHasherDefault, Hasher};

/// Multiplies by 2^64 / φ, then folds the high half into the low: the table picks buckets by
/// the low bits, and a product of two odd numbers alone would always have bit 0 set.
#[derive(Default)]
pub(crate) struct StreamIdHasher(u64);

impl Hasher for StreamIdHasher {
    fn write_u32(&mut self, id: u32) {
        let h = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = h ^ (h >> 29);
    }

    /// Only `u32` keys use this hasher; any other write still mixes in every byte.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The map's hasher builder.
pub(crate) type StreamIds = BuildHasherDefault<StreamIdHasher>;

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn client_stream_ids_spread_over_the_low_bits() {
        // Odd identifiers, as a client opens them: with 256 buckets, the bucket is the low
        // 8 bits; a plain multiplication would fill only the odd half of them.
        let buckets: HashSet<u64> = (0..256u32).map(|i| StreamIds::default().hash_one(2 * i + 1) & 0xff).collect();
        assert!(buckets.len() > 150, "{} of 256 buckets used", buckets.len());
        assert!(buckets.iter().any(|b| b % 2 == 0), "even buckets are used too");
    }

    #[test]
    fn equal_ids_hash_alike_and_neighbours_differ() {
        let s = StreamIds::default();
        assert_eq!(s.hash_one(7u32), s.hash_one(7u32));
        assert_ne!(s.hash_one(7u32), s.hash_one(9u32));
    }
}
