//! Properties of the parsers that read what a peer sends, and of the HTTP/2 connection that
//! applies it ([`http2_connection`]), checked on arbitrary bytes.
//!
//! Each check panics when its property fails. Two drivers call the same checks: the libFuzzer
//! targets in the repository's `fuzz/` directory (coverage-guided, run offline with a nightly
//! toolchain), and the tests below (and in the crates that depend on this one), which on every
//! `cargo test` replay the committed corpus under `fuzz/corpus/<target>/` and seeded mutations
//! of it. So a crash libFuzzer finds becomes a corpus file, and from then on a test.
//!
//! Feature `fuzzing` (or this crate's own tests).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use http::HeaderValue;
use rustls_pki_types::CertificateDer;

use crate::certs::LeafInfo;
use crate::http2::hpack::{Decoder, Encoder, Field, HpackError};
use crate::identity::Identity;
use crate::tunnel::headers::{forwarded_for, parse_forwarded_for};

mod connection;
pub use connection::http2_connection;

/// SPIFFE IDs (a peer certificate's URI SAN, xDS): an accepted ID is the input itself, its
/// parts are its path segments and only what the SPIFFE spec allows (no empty or dot
/// segments, which would let one identity pass for another's path), and it parses again to
/// an equal identity.
pub fn identity(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(id) = text.parse::<Identity>() else { return };
    assert_eq!(id.as_str(), text);
    // The spec's character sets, written out apart from the parser's: an oracle, not a copy.
    let td_ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || b".-_".contains(&c);
    assert!(!id.trust_domain().is_empty() && id.trust_domain().bytes().all(td_ok), "{text:?}");
    for seg in [id.namespace(), id.service_account()] {
        let ok = |c: u8| c.is_ascii_alphanumeric() || b".-_".contains(&c);
        assert!(!seg.is_empty() && seg != "." && seg != ".." && seg.bytes().all(ok), "{text:?}: {seg:?}");
    }
    let rebuilt = format!("spiffe://{}/ns/{}/sa/{}", id.trust_domain(), id.namespace(), id.service_account());
    assert_eq!(rebuilt, text, "parts of {text:?}");
    let again: Identity = rebuilt.parse().expect("an accepted identity parses again");
    assert_eq!(again, id);
    assert_eq!(Identity::new(id.trust_domain(), id.namespace(), id.service_account()).ok(), Some(id));
}

/// A peer's leaf certificate (DER): parsing never panics, and the identity it yields is one
/// that parses again to itself.
pub fn leaf_certificate(data: &[u8]) {
    if let Some(id) = leaf_identity(data) {
        let again: Identity = id.as_str().parse().expect("a certificate's identity is valid");
        assert_eq!(again, id);
    }
}

/// The identity a leaf certificate (DER) proves, read as the mesh's verifiers read it; for
/// other crates' checks of certificates they issue.
pub fn leaf_identity(der: &[u8]) -> Option<Identity> {
    LeafInfo::parse(&CertificateDer::from(der)).ok().map(|l| l.identity)
}

/// An HBONE CONNECT's head: the first line is the `:authority`, the second the `forwarded`
/// header. The target is an `ip:port` exactly when the authority is one, and a client address
/// read from `forwarded` is one that writing it back and reading again gives unchanged.
pub fn connect_head(data: &[u8]) {
    let mut lines = data.splitn(2, |b| *b == b'\n');
    let authority = lines.next().unwrap_or_default();
    let forwarded = lines.next().unwrap_or_default();
    if let Ok(value) = HeaderValue::from_bytes(forwarded)
        && let Some(addr) = parse_forwarded_for(&value)
    {
        assert_eq!(parse_forwarded_for(&forwarded_for(addr)), Some(addr), "{value:?}");
    }
    let head = crate::http2::RequestHead {
        method: bytes::Bytes::from_static(b"CONNECT"),
        authority: Some(bytes::Bytes::copy_from_slice(authority)),
        scheme: None,
        path: None,
        protocol: None,
        fields: http::HeaderMap::new(),
    };
    // An accepted target is a socket address that prints and parses back to itself, and
    // nothing that could name a path, a host name or a second target is accepted.
    if let Ok(addr) = crate::tunnel::server::validate(&head) {
        assert_eq!(addr.to_string().parse::<SocketAddr>().ok(), Some(addr), "{authority:?}");
        assert!(
            !authority.iter().any(|c| b"/?#@, \t".contains(c) || c.is_ascii_alphabetic() && !c.is_ascii_hexdigit())
        );
    }
}

/// HPACK header blocks, as a peer's encoder sends them on one connection: the first byte sets
/// the table size we advertise (times 16), the rest is a sequence of blocks, each after a byte
/// giving its length. Decoding never panics and is deterministic; the list-size limit changes
/// only whether a block's fields are returned, never the dynamic table (a decoder without the
/// limit stays in step); and the fields of a block, encoded again, decode to themselves.
pub fn hpack(data: &[u8]) {
    let once = hpack_connection(data);
    assert_eq!(once, hpack_connection(data), "decoding is deterministic");
}

/// HTTP/2 frames as a peer sends them, back to back: checking a frame never panics, a head
/// reads back from its own encoding, and what passes holds the values RFC 9113 allows
/// (windows and increments within 2^31-1, frame sizes within 2^14..2^24-1, DATA no longer than
/// what counts against flow control, stream errors only on a stream).
pub fn http2_frames(mut data: &[u8]) {
    use crate::http2::frame::{self, Frame, HEAD_LEN, Head, MAX_FRAME_SIZE_LIMIT, MAX_WINDOW, setting};
    while data.len() >= HEAD_LEN {
        let head = Head::parse(data[..HEAD_LEN].try_into().expect("9 bytes"));
        assert_eq!(Head::parse(&head.encode()), head);
        let Some(payload) = data.get(HEAD_LEN..HEAD_LEN + head.len as usize) else { return };
        match frame::parse(&head, payload) {
            Ok(Frame::Data { data: d, flow_len, stream, .. }) => {
                assert!(d.len() <= flow_len as usize && flow_len == head.len && stream != 0);
            }
            Ok(Frame::Settings { params, .. }) => {
                for (id, value) in frame::settings_entries(params) {
                    match id {
                        setting::INITIAL_WINDOW_SIZE => assert!(value <= MAX_WINDOW),
                        setting::MAX_FRAME_SIZE => assert!((16_384..=MAX_FRAME_SIZE_LIMIT).contains(&value)),
                        setting::ENABLE_PUSH => assert!(value <= 1),
                        _ => {}
                    }
                }
            }
            Ok(Frame::WindowUpdate { increment, .. }) => assert!(increment != 0 && increment <= MAX_WINDOW),
            Ok(Frame::Headers { block, .. } | Frame::Continuation { block, .. }) => {
                assert!(block.len() <= payload.len());
            }
            Ok(_) => {}
            Err(e) => {
                if let Some(stream) = e.stream {
                    assert!(stream == head.stream && stream != 0, "{e}");
                }
                assert!(!e.why.is_empty());
            }
        }
        data = &data[HEAD_LEN + head.len as usize..];
    }
}

/// The results of decoding the blocks of [`hpack`]'s input, up to the first compression error.
fn hpack_connection(data: &[u8]) -> Vec<Result<Vec<Field>, HpackError>> {
    const LIMIT: usize = 1024;
    let Some((&size, mut rest)) = data.split_first() else { return Vec::new() };
    let max_table_size = usize::from(size) * 16;
    let (mut limited, mut unlimited) = (Decoder::new(max_table_size), Decoder::new(max_table_size));
    let (mut encoder, mut again) = (Encoder::new(), Decoder::new(max_table_size));
    let mut results = Vec::new();
    while let Some((&len, tail)) = rest.split_first() {
        let (block, tail) = tail.split_at(usize::from(len).min(tail.len()));
        rest = tail;
        let result = limited.decode(block, LIMIT);
        let whole = unlimited.decode(block, usize::MAX);
        let list_size = |fields: &[Field]| fields.iter().map(|f| f.name.len() + f.value.len() + 32).sum::<usize>();
        match (&result, &whole) {
            (Ok(fields), _) => {
                assert_eq!(whole.as_ref(), Ok(fields), "the limit changed the fields");
                assert!(list_size(fields) <= LIMIT);
            }
            (Err(e), Ok(fields)) if e.is_list_too_large() => assert!(list_size(fields) > LIMIT, "{e}"),
            (Err(e), _) => assert_eq!(whole.as_ref().err(), Some(e), "the limit changed the error"),
        }
        if let Ok(fields) = &whole {
            let mut out = Vec::new();
            encoder.encode(fields.iter().map(|f| (&f.name[..], &f.value[..])), &mut out);
            assert_eq!(again.decode(&out, usize::MAX).as_ref(), Ok(fields), "re-encoded as {out:02x?}");
        }
        let stop = result.as_ref().is_err_and(|e| !e.is_list_too_large());
        results.push(result);
        if stop {
            break;
        }
    }
    results
}

/// The committed corpus of a target (`fuzz/corpus/<target>/`, from the workspace root), in
/// file-name order; empty when the directory is not there.
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
    files.sort();
    files.iter().filter_map(|f| std::fs::read(f).ok()).collect()
}

/// Runs `check` on the committed corpus of `target`, `extra` seeds, and `count` seeded
/// mutations of them: what the tests of each crate's checks do. Panics if the corpus is
/// missing, so a test cannot pass by checking nothing.
pub fn replay(target: &str, extra: Vec<Vec<u8>>, tokens: &[&[u8]], count: usize, check: fn(&[u8])) {
    let mut seeds = corpus(target);
    assert!(!seeds.is_empty(), "fuzz/corpus/{target} holds the seeds");
    seeds.extend(extra);
    for input in mutations(&seeds, tokens, count, 0x5eed ^ target.len() as u64) {
        check(&input);
    }
}

/// `count` inputs made from `seeds` by a few random edits each (bit flips, byte changes,
/// insertions of a seed's bytes or a `token`, deletions, splices), the same for the same
/// `rng_seed`; the seeds themselves come first.
pub fn mutations(seeds: &[Vec<u8>], tokens: &[&[u8]], count: usize, rng_seed: u64) -> Vec<Vec<u8>> {
    let mut rng = XorShift(rng_seed | 1);
    let mut out: Vec<Vec<u8>> = seeds.to_vec();
    if seeds.is_empty() {
        return out;
    }
    while out.len() < seeds.len() + count {
        let mut input = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(4) {
            edit(&mut input, seeds, tokens, &mut rng);
        }
        out.push(input);
    }
    out
}

fn edit(input: &mut Vec<u8>, seeds: &[Vec<u8>], tokens: &[&[u8]], rng: &mut XorShift) {
    let at = rng.below(input.len() + 1);
    match rng.below(6) {
        0 if !input.is_empty() => {
            let i = at.min(input.len() - 1);
            input[i] ^= 1 << rng.below(8);
        }
        1 if !input.is_empty() => {
            let i = at.min(input.len() - 1);
            input[i] = rng.next() as u8;
        }
        2 if !tokens.is_empty() => {
            let t = tokens[rng.below(tokens.len())];
            input.splice(at..at, t.iter().copied());
        }
        3 => {
            let end = (at + 1 + rng.below(8)).min(input.len());
            input.drain(at.min(end)..end);
        }
        4 => {
            let other = &seeds[rng.below(seeds.len())];
            let from = rng.below(other.len() + 1);
            let to = (from + rng.below(16)).min(other.len());
            input.splice(at..at, other[from..to].iter().copied());
        }
        _ => input.insert(at, rng.next() as u8),
    }
}

/// xorshift64: reproducible without a dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TestCa, id};

    /// Mutations per target and test run: enough to reach the error paths the corpus leads
    /// to, few enough that the run takes well under a second.
    const MUTATIONS: usize = 20_000;

    #[test]
    fn identities() {
        let tokens: &[&[u8]] = &[b"spiffe://", b"/ns/", b"/sa/", b"/", b".", b"..", b"%2f", b"\xc3\xa9", b"A"];
        replay("identity", Vec::new(), tokens, MUTATIONS, identity);
    }

    #[test]
    fn leaf_certificates() {
        let ca = TestCa::new("fuzz");
        let cert = ca.issue(&id("default", "sleep"), std::time::Duration::from_secs(3600));
        let der = cert.certified_key().cert[0].to_vec();
        let tokens: &[&[u8]] = &[b"spiffe://cluster.local/ns/a/sa/b", b"\x86", b"\x30\x82", b"\x00", b"\xff"];
        replay("leaf_certificate", vec![der], tokens, MUTATIONS, leaf_certificate);
    }

    #[test]
    fn connect_heads() {
        let tokens: &[&[u8]] = &[b"for=", b"\"", b";", b",", b":", b"[", b"]", b"::1", b"10.0.0.1", b"\n"];
        replay("connect_head", Vec::new(), tokens, MUTATIONS, connect_head);
    }

    #[test]
    fn http2_frame_sequences() {
        let tokens: &[&[u8]] = &[
            b"\x00\x00\x00",
            b"\x00\x00\x06\x04\x00\x00\x00\x00\x00",
            b"\x00\x00\x04\x08\x00\x00\x00\x00\x01",
            b"\x08",
            b"\x20",
            b"\x7f\xff\xff\xff",
            b"\x80\x00\x00\x00",
            b"\x00\x04",
            b"\x00\x05",
        ];
        replay("http2_frames", Vec::new(), tokens, MUTATIONS, http2_frames);
    }

    #[test]
    fn hpack_blocks() {
        let tokens: &[&[u8]] = &[
            b"\x82",
            b"\xbe",
            b"\x40",
            b"\x0f",
            b"\x10",
            b"\x20",
            b"\x3f\xe1\x1f",
            b"\x7f",
            b"\xff\xff\xff\x0f",
            b"\x8c",
            b"\x03",
        ];
        replay("hpack", Vec::new(), tokens, MUTATIONS, hpack);
    }

    /// The mutator is deterministic and does change its seeds; a broken one would make the
    /// tests above replay the corpus only.
    #[test]
    fn mutations_are_reproducible_and_differ() {
        let seeds = vec![b"spiffe://td/ns/a/sa/b".to_vec()];
        let a = mutations(&seeds, &[b"x"], 100, 1);
        assert_eq!(a, mutations(&seeds, &[b"x"], 100, 1));
        assert_eq!(a.len(), 101);
        assert!(a[1..].iter().filter(|m| **m != seeds[0]).count() > 90);
    }
}
