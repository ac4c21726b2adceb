//! The Huffman code of HPACK string literals (RFC 7541 §5.2, Appendix B).
//!
//! The code is canonical: within one length, codes count up in symbol order, and each length
//! starts where the previous one left off, shifted. So the code lengths alone define it, and
//! they are all that is written down here; the decoder's tables are derived from them at
//! compile time, and a test holds the derived codes against ones the RFC prints.

use super::hpack::HpackError;

/// End of string: never sent as a symbol, its leading bits pad the last octet.
const EOS: u16 = 256;

/// The longest code (EOS and a few control characters).
const MAX_LEN: usize = 30;

/// Code length in bits of each symbol 0..=255 and EOS, from RFC 7541 Appendix B.
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0x00
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 0x10
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // 0x20 ' '
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // 0x30 '0'
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // 0x40 '@'
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 0x50 'P'
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // 0x60 '`'
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 0x70 'p'
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 0x80
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 0x90
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 0xa0
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 0xb0
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 0xc0
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 0xd0
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 0xe0
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 0xf0
    30, // EOS
];

/// What canonical decoding needs, per code length `len`: the first code of that length, how
/// many codes have it, and where their symbols start in `symbols` (sorted by length, then
/// value).
struct Canon {
    first_code: [u32; MAX_LEN + 1],
    count: [u32; MAX_LEN + 1],
    first_index: [usize; MAX_LEN + 1],
    symbols: [u16; 257],
}

const CANON: Canon = Canon::derive();

impl Canon {
    const fn derive() -> Canon {
        let mut count = [0u32; MAX_LEN + 1];
        let mut sym = 0;
        while sym < LENGTHS.len() {
            count[LENGTHS[sym] as usize] += 1;
            sym += 1;
        }
        let mut first_code = [0u32; MAX_LEN + 1];
        let mut first_index = [0usize; MAX_LEN + 1];
        let mut len = 2;
        while len <= MAX_LEN {
            first_code[len] = (first_code[len - 1] + count[len - 1]) << 1;
            first_index[len] = first_index[len - 1] + count[len - 1] as usize;
            len += 1;
        }
        let mut symbols = [0u16; 257];
        let mut next = first_index;
        let mut sym = 0;
        while sym < LENGTHS.len() {
            let len = LENGTHS[sym] as usize;
            symbols[next[len]] = sym as u16;
            next[len] += 1;
            sym += 1;
        }
        Canon { first_code, count, first_index, symbols }
    }
}

/// Appends the decoding of `src` to `dst`. Bit by bit: at most 8 steps per input octet, and
/// the string literals it reads are short.
pub(super) fn decode(src: &[u8], dst: &mut Vec<u8>) -> Result<(), HpackError> {
    // The bits read since the last symbol, and how many. The code is complete (every 30-bit
    // string starts with a code), so `len` never passes MAX_LEN.
    let mut code = 0u32;
    let mut len = 0usize;
    for byte in src {
        for shift in (0..8).rev() {
            code = code << 1 | u32::from(byte >> shift & 1);
            len += 1;
            let offset = code.wrapping_sub(CANON.first_code[len]);
            if offset < CANON.count[len] {
                let sym = CANON.symbols[CANON.first_index[len] + offset as usize];
                if sym == EOS {
                    return Err(HpackError::HuffmanEos);
                }
                dst.push(sym as u8);
                code = 0;
                len = 0;
            }
        }
    }
    // What is left must be a prefix of EOS, and shorter than an octet (§5.2).
    if len > 7 {
        Err(HpackError::HuffmanPaddingTooLong { bits: len })
    } else if code != (1 << len) - 1 {
        Err(HpackError::HuffmanPaddingNotEos)
    } else {
        Ok(())
    }
}

/// The code of `sym`, right-aligned, and its length: read back from the decoder's tables.
#[cfg(test)]
fn code(sym: u16) -> (u32, u8) {
    let len = LENGTHS[usize::from(sym)];
    let start = CANON.first_index[usize::from(len)];
    let rank = CANON.symbols[start..].iter().position(|&s| s == sym).unwrap();
    (CANON.first_code[usize::from(len)] + rank as u32, len)
}

/// Huffman-codes `src`, padded with ones; the production encoder sends strings raw.
#[cfg(test)]
pub(super) fn encode(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u64, 0u32);
    for &b in src {
        let (code, len) = code(u16::from(b));
        acc = acc << len | u64::from(code);
        bits += u32::from(len);
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        out.push((acc << (8 - bits)) as u8 | (0xff >> bits));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn decoded(src: &[u8]) -> Result<Vec<u8>, HpackError> {
        let mut out = Vec::new();
        decode(src, &mut out).map(|()| out)
    }

    /// The derived codes are the RFC's: a wrong length anywhere shifts the codes after it.
    #[test]
    fn codes_match_appendix_b() {
        let printed: &[(u16, u32, u8)] = &[
            (b' '.into(), 0x14, 6),
            (b'0'.into(), 0x0, 5),
            (b'a'.into(), 0x3, 5),
            (b'A'.into(), 0x21, 6),
            (b':'.into(), 0x5c, 7),
            (b'z'.into(), 0x7b, 7),
            (b'&'.into(), 0xf8, 8),
            (b'~'.into(), 0x1ffd, 13),
            (0, 0x1ff8, 13),
            (1, 0x7fffd8, 23),
            (10, 0x3ffffffc, 30),
            (127, 0xffffffc, 28),
            (128, 0xfffe6, 20),
            (200, 0x3ffffe2, 26),
            (255, 0x3ffffee, 26),
            (EOS, 0x3fffffff, 30),
        ];
        for &(sym, code_, len) in printed {
            assert_eq!(code(sym), (code_, len), "symbol {sym}");
        }
    }

    /// Kraft equality: the code is complete, which the decoder relies on to stay within
    /// MAX_LEN bits per symbol.
    #[test]
    fn code_is_complete() {
        let sum: u64 = LENGTHS.iter().map(|&l| 1u64 << (MAX_LEN - usize::from(l))).sum();
        assert_eq!(sum, 1 << MAX_LEN);
    }

    /// The Huffman-coded strings of RFC 7541 Appendix C.4 and C.6.
    #[test]
    fn appendix_c_strings() {
        let cases = [
            ("f1e3 c2e5 f23a 6ba0 ab90 f4ff", "www.example.com"),
            ("a8eb 1064 9cbf", "no-cache"),
            ("25a8 49e9 5ba9 7d7f", "custom-key"),
            ("25a8 49e9 5bb8 e8b4 bf", "custom-value"),
            ("6402", "302"),
            ("aec3 771a 4b", "private"),
            ("d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff", "Mon, 21 Oct 2013 20:13:21 GMT"),
            ("9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3", "https://www.example.com"),
            ("640e ff", "307"),
            ("9bd9 ab", "gzip"),
        ];
        for (coded, plain) in cases {
            assert_eq!(decoded(&hex(coded)).unwrap(), plain.as_bytes(), "{plain}");
            assert_eq!(encode(plain.as_bytes()), hex(coded), "{plain}");
        }
    }

    #[test]
    fn every_octet_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decoded(&encode(&all)).unwrap(), all);
        for b in 0..=255u8 {
            assert_eq!(decoded(&encode(&[b])).unwrap(), [b]);
        }
        assert_eq!(decoded(&[]).unwrap(), b"");
    }

    #[test]
    fn eos_inside_a_string_is_an_error() {
        // 30 ones (EOS), then two zero bits.
        assert_eq!(decoded(&hex("ffff fffc")), Err(HpackError::HuffmanEos));
        // 'a' (00011), then EOS, then padding.
        let mut bits = 0b00011u64 << 30 | 0x3fff_ffff;
        bits = bits << 5 | 0b11111;
        assert_eq!(decoded(&bits.to_be_bytes()[3..]), Err(HpackError::HuffmanEos));
    }

    #[test]
    fn padding_longer_than_seven_bits_is_an_error() {
        // '0' (00000) then 11 ones: a prefix of EOS, but more than an octet of it.
        assert_eq!(decoded(&hex("07ff")), Err(HpackError::HuffmanPaddingTooLong { bits: 11 }));
        assert_eq!(decoded(&hex("ff")), Err(HpackError::HuffmanPaddingTooLong { bits: 8 }));
    }

    #[test]
    fn padding_must_be_ones() {
        // '0' (00000) then 000: zeros are not the start of EOS (and decode to nothing yet).
        assert_eq!(decoded(&hex("00")), Err(HpackError::HuffmanPaddingNotEos));
        // 'a' (00011) then 110.
        assert_eq!(decoded(&[0b0001_1110]), Err(HpackError::HuffmanPaddingNotEos));
        // The same with ones: valid.
        assert_eq!(decoded(&[0b0001_1111]).unwrap(), b"a");
    }
}
