//! HPACK (RFC 7541): the decoder a peer's encoder may rely on in full, and an encoder that keeps
//! no state worth the name.
//!
//! The decoder must implement everything: the peer chooses the representations. The encoder
//! does not: HBONE sends a handful of header fields per stream, so indexing them would save
//! little and would oblige us to track the peer's SETTINGS_HEADER_TABLE_SIZE; instead it sets
//! the table size to 0 once and then writes static-table references and raw literals.

use std::collections::VecDeque;

use bytes::Bytes;

use super::huffman;

/// One decoded header field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// As sent: HPACK does not check it, HTTP/2 rules on it (lower case, no pseudo-header
    /// after a regular one).
    pub name: Bytes,
    /// As sent.
    pub value: Bytes,
}

/// Why a header block could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HpackError {
    /// The block ends inside an integer.
    #[error("header block ends inside an integer")]
    TruncatedInteger,
    /// The block ends inside a string literal.
    #[error("string literal of {len} bytes with only {left} left in the header block")]
    TruncatedString {
        /// The length the literal declares.
        len: usize,
        /// What the block still held.
        left: usize,
    },
    /// An integer beyond 32 bits, or one written with more octets than that needs.
    #[error("integer does not fit in 32 bits")]
    IntegerOverflow,
    /// Index 0 names no entry (§6.1).
    #[error("index 0 names no table entry")]
    ZeroIndex,
    /// An index past the static and dynamic tables.
    #[error("index {index} is past the dynamic table ({len} entries)")]
    IndexTooLarge {
        /// The index received.
        index: usize,
        /// Entries the dynamic table held.
        len: usize,
    },
    /// A dynamic table size update above what we advertised (§6.3).
    #[error("dynamic table size update to {size} exceeds the advertised maximum {max}")]
    TableSizeTooLarge {
        /// The size asked for.
        size: usize,
        /// SETTINGS_HEADER_TABLE_SIZE as we sent it.
        max: usize,
    },
    /// A dynamic table size update after a header field (§4.2).
    #[error("dynamic table size update after the first header field of the block")]
    LateTableSizeUpdate,
    /// A Huffman-coded string contains EOS (§5.2).
    #[error("Huffman-coded string contains the EOS symbol")]
    HuffmanEos,
    /// A Huffman-coded string ends with 8 or more bits of padding (§5.2).
    #[error("Huffman-coded string ends with {bits} bits of padding, more than 7")]
    HuffmanPaddingTooLong {
        /// Bits left over after the last symbol.
        bits: usize,
    },
    /// A Huffman-coded string's padding is not the start of EOS, all ones (§5.2).
    #[error("Huffman-coded string's padding is not all ones")]
    HuffmanPaddingNotEos,
    /// The block decoded, but its fields exceed the header list size limit.
    #[error("header list of {size} bytes or more exceeds the limit of {limit}")]
    ListTooLarge {
        /// The list's size (RFC 9113 §6.5.2) up to the field that passed the limit.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

impl HpackError {
    /// True for the one error that is not a COMPRESSION_ERROR: the block decoded fine but its
    /// fields exceed the list-size limit.
    pub fn is_list_too_large(&self) -> bool {
        matches!(self, HpackError::ListTooLarge { .. })
    }
}

/// RFC 7541 Appendix A; index `i` is `STATIC[i - 1]`.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Per-entry overhead in table and list sizes (§4.1; RFC 9113 §6.5.2).
const ENTRY_OVERHEAD: usize = 32;

fn entry_size(name: &[u8], value: &[u8]) -> usize {
    name.len() + value.len() + ENTRY_OVERHEAD
}

/// The dynamic table (§2.3.2, §4): newest entry first, so index 62 is `entries[0]`.
#[derive(Debug)]
struct Table {
    entries: VecDeque<Field>,
    size: usize,
    max_size: usize,
}

impl Table {
    fn insert(&mut self, field: Field) {
        let size = entry_size(&field.name, &field.value);
        // An entry larger than the table empties it and is not added (§4.4): not an error.
        self.evict_to(self.max_size.saturating_sub(size));
        if size <= self.max_size {
            self.size += size;
            self.entries.push_front(field);
        }
    }

    fn resize(&mut self, max_size: usize) {
        self.max_size = max_size;
        self.evict_to(max_size);
    }

    fn evict_to(&mut self, size: usize) {
        while self.size > size
            && let Some(old) = self.entries.pop_back()
        {
            self.size -= entry_size(&old.name, &old.value);
        }
    }
}

/// Decodes the header blocks of one direction of a connection; the dynamic table carries
/// over from block to block, so every block must go through the same decoder, in order.
#[derive(Debug)]
pub struct Decoder {
    table: Table,
    /// SETTINGS_HEADER_TABLE_SIZE as we advertised it: the ceiling for size updates.
    max_table_size: usize,
}

impl Decoder {
    /// `max_table_size`: the SETTINGS_HEADER_TABLE_SIZE we advertise (4096 default) — the
    /// largest size update the peer's encoder may ask for.
    pub fn new(max_table_size: usize) -> Self {
        Decoder { table: Table { entries: VecDeque::new(), size: 0, max_size: max_table_size }, max_table_size }
    }

    /// Decodes one complete header block (HEADERS + CONTINUATION fragments already joined).
    ///
    /// `max_list_size` limits the sum over fields of name, value and 32 (RFC 9113 §6.5.2). A
    /// list over it still has the whole block processed, so that the dynamic table stays in
    /// step with the peer's encoder and the connection can go on; only the fields are dropped.
    /// Every other error leaves the table out of step, and so is a COMPRESSION_ERROR.
    pub fn decode(&mut self, block: &[u8], max_list_size: usize) -> Result<Vec<Field>, HpackError> {
        let mut src = Reader(block);
        let mut fields = Vec::new();
        let mut list_size = 0usize;
        let mut first = true;
        while let Some(byte) = src.peek() {
            let field = if byte & 0x80 != 0 {
                // Indexed field (§6.1).
                let index = src.integer(7)?;
                self.get(index)?
            } else if byte & 0x40 != 0 {
                // Literal with incremental indexing (§6.2.1).
                let field = self.literal(&mut src, 6)?;
                self.table.insert(field.clone());
                field
            } else if byte & 0x20 != 0 {
                // Dynamic table size update (§6.3), allowed only before the first field.
                if !first {
                    return Err(HpackError::LateTableSizeUpdate);
                }
                let size = src.integer(5)?;
                if size > self.max_table_size {
                    return Err(HpackError::TableSizeTooLarge { size, max: self.max_table_size });
                }
                self.table.resize(size);
                continue;
            } else {
                // Literal without indexing (0000) or never indexed (0001) (§6.2.2, §6.2.3):
                // the same to a decoder that is the last hop.
                self.literal(&mut src, 4)?
            };
            first = false;
            if list_size <= max_list_size {
                list_size = list_size.saturating_add(entry_size(&field.name, &field.value));
                fields.push(field);
            }
        }
        if list_size > max_list_size {
            return Err(HpackError::ListTooLarge { size: list_size, limit: max_list_size });
        }
        Ok(fields)
    }

    /// The entry at `index` of the static table followed by the dynamic table (§2.3.3).
    fn get(&self, index: usize) -> Result<Field, HpackError> {
        match index {
            0 => Err(HpackError::ZeroIndex),
            1..=61 => {
                let (name, value) = STATIC[index - 1];
                Ok(Field { name: Bytes::from_static(name.as_bytes()), value: Bytes::from_static(value.as_bytes()) })
            }
            _ => self
                .table
                .entries
                .get(index - 62)
                .cloned()
                .ok_or(HpackError::IndexTooLarge { index, len: self.table.entries.len() }),
        }
    }

    /// A literal field whose name index has an `n`-bit prefix; index 0 means a literal name.
    fn literal(&self, src: &mut Reader<'_>, n: u32) -> Result<Field, HpackError> {
        let name = match src.integer(n)? {
            0 => src.string()?,
            index => self.get(index)?.name,
        };
        Ok(Field { name, value: src.string()? })
    }
}

/// The unread rest of a header block.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.0.first().copied()
    }

    /// An integer with an `n`-bit prefix (§5.1). At most 5 continuation octets: enough for
    /// 32 bits, so that a long run of 0x80 is not taken as a roundabout zero.
    fn integer(&mut self, n: u32) -> Result<usize, HpackError> {
        let (&first, mut rest) = self.0.split_first().ok_or(HpackError::TruncatedInteger)?;
        let max_prefix = (1u8 << n) - 1;
        let mut value = u64::from(first & max_prefix);
        if value == u64::from(max_prefix) {
            let mut shift = 0;
            loop {
                let (&byte, tail) = rest.split_first().ok_or(HpackError::TruncatedInteger)?;
                rest = tail;
                value += u64::from(byte & 0x7f) << shift;
                if value > u64::from(u32::MAX) {
                    return Err(HpackError::IntegerOverflow);
                }
                if byte & 0x80 == 0 {
                    break;
                }
                shift += 7;
                if shift >= 35 {
                    return Err(HpackError::IntegerOverflow);
                }
            }
        }
        self.0 = rest;
        usize::try_from(value).map_err(|_| HpackError::IntegerOverflow)
    }

    /// A string literal (§5.2): H bit, 7-bit-prefix length, octets.
    fn string(&mut self) -> Result<Bytes, HpackError> {
        let huffman = self.peek().is_some_and(|b| b & 0x80 != 0);
        let len = self.integer(7)?;
        if len > self.0.len() {
            return Err(HpackError::TruncatedString { len, left: self.0.len() });
        }
        let (raw, rest) = self.0.split_at(len);
        self.0 = rest;
        if huffman {
            let mut out = Vec::with_capacity(len + len / 2);
            huffman::decode(raw, &mut out)?;
            Ok(out.into())
        } else {
            Ok(Bytes::copy_from_slice(raw))
        }
    }
}

/// Writes header blocks that never touch the dynamic table, so it holds no table, only
/// whether the size update that empties the peer's view of it has been sent.
#[derive(Debug, Default)]
pub struct Encoder {
    sent_size_update: bool,
}

impl Encoder {
    /// An encoder for one direction of a new connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the header block for `fields` (names already lower case) to `dst`.
    ///
    /// The first block starts with a size update to 0, which any SETTINGS_HEADER_TABLE_SIZE
    /// the peer chooses, even 0, allows: so there is no setting to track. No field is indexed
    /// and no string Huffman-coded: the few fields HBONE sends are not worth the CPU.
    pub fn encode<'a>(&mut self, fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>, dst: &mut Vec<u8>) {
        if !self.sent_size_update {
            put_integer(dst, 0x20, 5, 0);
            self.sent_size_update = true;
        }
        for (name, value) in fields {
            let mut name_index = 0;
            let mut full = 0;
            for (i, (n, v)) in STATIC.iter().enumerate() {
                if n.as_bytes() == name {
                    if name_index == 0 {
                        name_index = i + 1;
                    }
                    if v.as_bytes() == value {
                        full = i + 1;
                        break;
                    }
                }
            }
            if full != 0 {
                put_integer(dst, 0x80, 7, full);
                continue;
            }
            // Literal without indexing (§6.2.2), with the name indexed if it can be.
            put_integer(dst, 0x00, 4, name_index);
            if name_index == 0 {
                put_string(dst, name);
            }
            put_string(dst, value);
        }
    }
}

/// `value` with an `n`-bit prefix, the octet's other bits set to `flags` (§5.1).
fn put_integer(dst: &mut Vec<u8>, flags: u8, n: u32, value: usize) {
    let max_prefix = (1usize << n) - 1;
    if value < max_prefix {
        dst.push(flags | value as u8);
        return;
    }
    dst.push(flags | max_prefix as u8);
    let mut rest = value - max_prefix;
    while rest >= 0x80 {
        dst.push(rest as u8 | 0x80);
        rest >>= 7;
    }
    dst.push(rest as u8);
}

/// A raw string literal: H bit 0, length, octets (§5.2).
fn put_string(dst: &mut Vec<u8>, s: &[u8]) {
    put_integer(dst, 0x00, 7, s.len());
    dst.extend_from_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn field(name: &str, value: &str) -> Field {
        Field { name: Bytes::copy_from_slice(name.as_bytes()), value: Bytes::copy_from_slice(value.as_bytes()) }
    }

    fn fields(list: &[(&str, &str)]) -> Vec<Field> {
        list.iter().map(|(n, v)| field(n, v)).collect()
    }

    /// Decodes `block` and checks the fields, then the dynamic table newest first, and its size.
    #[track_caller]
    fn step(d: &mut Decoder, block: &str, want: &[(&str, &str)], table: &[(&str, &str)], size: usize) {
        assert_eq!(d.decode(&hex(block), usize::MAX).unwrap(), fields(want));
        assert_eq!(d.table.entries.iter().cloned().collect::<Vec<_>>(), fields(table));
        assert_eq!(d.table.size, size);
    }

    fn decode(block: &[u8]) -> Result<Vec<Field>, HpackError> {
        Decoder::new(4096).decode(block, usize::MAX)
    }

    #[test]
    fn integers_c1() {
        // C.1.1–C.1.2: 10 and 1337 with a 5-bit prefix. (C.1.3's 8-bit prefix does not occur
        // in HPACK's representations; 42 with a 7-bit one instead.)
        assert_eq!(Reader(&[0b0000_1010]).integer(5), Ok(10));
        assert_eq!(Reader(&[0b0001_1111, 0b1001_1010, 0b0000_1010]).integer(5), Ok(1337));
        assert_eq!(Reader(&[42]).integer(7), Ok(42));
        let mut out = Vec::new();
        put_integer(&mut out, 0, 5, 1337);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
        for n in [4, 5, 6, 7] {
            for v in [0, 1, 14, 15, 16, 30, 31, 62, 63, 126, 127, 128, 1337, 1 << 20, u32::MAX as usize] {
                let mut out = Vec::new();
                put_integer(&mut out, 0, n, v);
                let mut r = Reader(&out);
                assert_eq!(r.integer(n), Ok(v), "{v} with {n}-bit prefix");
                assert!(r.0.is_empty());
            }
        }
    }

    /// C.2.1's block and field.
    const C2_1: &str = "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572";
    const CUSTOM: (&str, &str) = ("custom-key", "custom-header");

    #[test]
    fn literal_with_indexing_c2_1() {
        let mut d = Decoder::new(4096);
        step(&mut d, C2_1, &[CUSTOM], &[CUSTOM], 55);
    }

    #[test]
    fn literal_without_indexing_c2_2() {
        let mut d = Decoder::new(4096);
        step(&mut d, "040c 2f73 616d 706c 652f 7061 7468", &[(":path", "/sample/path")], &[], 0);
    }

    #[test]
    fn literal_never_indexed_c2_3() {
        let mut d = Decoder::new(4096);
        step(&mut d, "1008 7061 7373 776f 7264 0673 6563 7265 74", &[("password", "secret")], &[], 0);
    }

    #[test]
    fn indexed_c2_4() {
        let mut d = Decoder::new(4096);
        step(&mut d, "82", &[(":method", "GET")], &[], 0);
    }

    /// C.3 and C.4 are the same requests, without and with Huffman coding.
    fn requests(blocks: [&str; 3]) {
        let mut d = Decoder::new(4096);
        let first = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")];
        step(&mut d, blocks[0], &first, &[(":authority", "www.example.com")], 57);
        let mut second = first.to_vec();
        second.push(("cache-control", "no-cache"));
        let table = [("cache-control", "no-cache"), (":authority", "www.example.com")];
        step(&mut d, blocks[1], &second, &table, 110);
        let third = [
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ];
        let table = [("custom-key", "custom-value"), ("cache-control", "no-cache"), (":authority", "www.example.com")];
        step(&mut d, blocks[2], &third, &table, 164);
    }

    #[test]
    fn requests_c3() {
        requests([
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ]);
    }

    #[test]
    fn requests_with_huffman_c4() {
        requests([
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ]);
    }

    /// C.5 and C.6 are the same responses, without and with Huffman coding, through a 256-byte
    /// table: each block evicts entries.
    fn responses(blocks: [&str; 3]) {
        let mut d = Decoder::new(256);
        let date1 = "Mon, 21 Oct 2013 20:13:21 GMT";
        let date2 = "Mon, 21 Oct 2013 20:13:22 GMT";
        let loc = "https://www.example.com";
        let cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
        let first = [(":status", "302"), ("cache-control", "private"), ("date", date1), ("location", loc)];
        let table = [("location", loc), ("date", date1), ("cache-control", "private"), (":status", "302")];
        step(&mut d, blocks[0], &first, &table, 222);
        let second = [(":status", "307"), ("cache-control", "private"), ("date", date1), ("location", loc)];
        let table = [(":status", "307"), ("location", loc), ("date", date1), ("cache-control", "private")];
        step(&mut d, blocks[1], &second, &table, 222);
        let third = [
            (":status", "200"),
            ("cache-control", "private"),
            ("date", date2),
            ("location", loc),
            ("content-encoding", "gzip"),
            ("set-cookie", cookie),
        ];
        let table = [("set-cookie", cookie), ("content-encoding", "gzip"), ("date", date2)];
        step(&mut d, blocks[2], &third, &table, 215);
    }

    #[test]
    fn responses_c5() {
        responses([
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 \
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 \
             6c65 2e63 6f6d",
            "4803 3330 37c1 c0bf",
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d \
             54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 \
             5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e \
             3d31",
        ]);
    }

    #[test]
    fn responses_with_huffman_c6() {
        responses([
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 \
             2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            "4883 640e ffc1 c0bf",
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab \
             77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f \
             9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        ]);
    }

    #[test]
    fn entry_larger_than_the_table_empties_it() {
        let mut d = Decoder::new(64);
        // custom-key: custom-header (55) fits; then a 10-byte name with a 30-byte value (72)
        // does not, and leaves the table empty.
        step(&mut d, C2_1, &[CUSTOM], &[CUSTOM], 55);
        let mut block = hex("400a 6375 7374 6f6d 2d6b 6579 1e");
        block.extend_from_slice(&[b'x'; 30]);
        assert_eq!(d.decode(&block, usize::MAX).unwrap().len(), 1);
        assert!(d.table.entries.is_empty());
        assert_eq!(d.table.size, 0);
    }

    #[test]
    fn size_updates_at_the_start_evict() {
        let mut d = Decoder::new(4096);
        step(&mut d, C2_1, &[CUSTOM], &[CUSTOM], 55);
        // Two updates in a row (0, then 4096) before an indexed field: the entry is gone.
        assert_eq!(d.decode(&hex("20 3fe1 1f 82"), usize::MAX).unwrap(), fields(&[(":method", "GET")]));
        assert!(d.table.entries.is_empty());
        assert_eq!(d.table.max_size, 4096);
        assert_eq!(decode(&hex("3fe1 1f")), Ok(vec![]));
    }

    #[test]
    fn size_update_above_the_advertised_maximum() {
        // 4097 = 31 + 4066 = 31 + 0x62 + 0x1f << 7.
        assert_eq!(decode(&hex("3fe2 1f")), Err(HpackError::TableSizeTooLarge { size: 4097, max: 4096 }));
        assert_eq!(Decoder::new(0).decode(&hex("21"), 0), Err(HpackError::TableSizeTooLarge { size: 1, max: 0 }));
    }

    #[test]
    fn size_update_after_a_field() {
        assert_eq!(decode(&hex("8220")), Err(HpackError::LateTableSizeUpdate));
    }

    #[test]
    fn index_zero() {
        assert_eq!(decode(&hex("80")), Err(HpackError::ZeroIndex));
    }

    #[test]
    fn index_past_the_tables() {
        assert_eq!(decode(&hex("be")), Err(HpackError::IndexTooLarge { index: 62, len: 0 }));
        // Literal with a name index past the tables.
        assert_eq!(decode(&hex("7f00 0161")), Err(HpackError::IndexTooLarge { index: 63, len: 0 }));
        let mut d = Decoder::new(4096);
        d.decode(&hex("4001 6101 62"), usize::MAX).unwrap();
        assert_eq!(d.decode(&hex("bf"), usize::MAX), Err(HpackError::IndexTooLarge { index: 63, len: 1 }));
        assert_eq!(
            HpackError::IndexTooLarge { index: 70, len: 12 }.to_string(),
            "index 70 is past the dynamic table (12 entries)"
        );
    }

    #[test]
    fn integer_overflow() {
        // 127 + 2^32 - 127 = 2^32: one past u32.
        assert_eq!(decode(&hex("ff81 ffff ff0f")), Err(HpackError::IntegerOverflow));
        // u32::MAX itself decodes (and is then a bad index).
        let index = u32::MAX as usize;
        assert_eq!(decode(&hex("ff80 ffff ff0f")), Err(HpackError::IndexTooLarge { index, len: 0 }));
        // Small value padded with a sixth continuation octet.
        assert_eq!(decode(&hex("ff80 8080 8080 00")), Err(HpackError::IntegerOverflow));
        // A long run of continuation octets stops early.
        let mut long = vec![0xff];
        long.extend_from_slice(&[0x80; 1000]);
        assert_eq!(decode(&long), Err(HpackError::IntegerOverflow));
    }

    #[test]
    fn truncated_integer() {
        assert_eq!(decode(&hex("ff")), Err(HpackError::TruncatedInteger));
        assert_eq!(decode(&hex("ff80")), Err(HpackError::TruncatedInteger));
        // A literal's name index present, its value's length not.
        assert_eq!(decode(&hex("44")), Err(HpackError::TruncatedInteger));
    }

    #[test]
    fn truncated_string() {
        assert_eq!(decode(&hex("0003 6162")), Err(HpackError::TruncatedString { len: 3, left: 2 }));
        let len = 127 + 0x7f + (0x7f << 7) + (0x7f << 14) + (0x0f << 21);
        assert_eq!(decode(&hex("007f ffff ff0f")), Err(HpackError::TruncatedString { len, left: 0 }));
    }

    #[test]
    fn huffman_errors_in_a_block() {
        // :path with a Huffman value that is EOS, 8 bits of padding, zero padding.
        assert_eq!(decode(&hex("0484 ffff fffc")), Err(HpackError::HuffmanEos));
        assert_eq!(decode(&hex("0481 ff")), Err(HpackError::HuffmanPaddingTooLong { bits: 8 }));
        assert_eq!(decode(&hex("0481 00")), Err(HpackError::HuffmanPaddingNotEos));
        // And in a name.
        assert_eq!(decode(&hex("0081 0000")), Err(HpackError::HuffmanPaddingNotEos));
        assert_eq!(decode(&hex("0481 1f")), Ok(fields(&[(":path", "a")])));
    }

    /// Over the limit, the block is still decoded to the end: its later indexed entries are in
    /// the table for the next block.
    #[test]
    fn list_too_large_keeps_the_table_in_step() {
        let mut d = Decoder::new(4096);
        // :method GET (42), then custom-key: custom-header (55) indexed, then a: b (34) indexed.
        let block = hex("82 400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572 4001 6101 62");
        let err = d.decode(&block, 50).unwrap_err();
        assert!(err.is_list_too_large(), "{err}");
        assert!(matches!(err, HpackError::ListTooLarge { limit: 50, .. }), "{err}");
        assert_eq!(d.decode(&hex("be bf"), 1000).unwrap(), fields(&[("a", "b"), ("custom-key", "custom-header")]));
        // Exactly at the limit is allowed.
        assert_eq!(Decoder::new(4096).decode(&block, 42 + 55 + 34).unwrap().len(), 3);
        assert!(!HpackError::ZeroIndex.is_list_too_large());
    }

    #[test]
    fn encoder_sends_one_size_update_first() {
        let mut e = Encoder::new();
        let mut first = Vec::new();
        e.encode([(&b":status"[..], &b"200"[..])], &mut first);
        assert_eq!(first, [0x20, 0x88]);
        let mut second = Vec::new();
        e.encode([(&b":status"[..], &b"200"[..])], &mut second);
        assert_eq!(second, [0x88]);
    }

    #[test]
    fn encoder_representations() {
        let mut e = Encoder::new();
        e.encode([], &mut Vec::new());
        let mut out = Vec::new();
        let list = [(":method", "CONNECT"), (":authority", "10.0.0.1:8080"), ("x-custom", "v"), (":method", "POST")];
        e.encode(list.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())), &mut out);
        let mut want = hex("02 07");
        want.extend_from_slice(b"CONNECT");
        want.extend_from_slice(&hex("01 0d"));
        want.extend_from_slice(b"10.0.0.1:8080");
        want.extend_from_slice(&hex("00 08"));
        want.extend_from_slice(b"x-custom");
        want.extend_from_slice(&hex("01 76 83"));
        assert_eq!(out, want);
    }

    #[test]
    fn encoder_round_trips() {
        let long = "v".repeat(300);
        let list = [
            (":method", "CONNECT"),
            (":authority", "[fd00::1]:15008"),
            (":status", "200"),
            (":status", "503"),
            ("forwarded", "for=10.0.0.1"),
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ("x-empty", ""),
            ("", "empty name"),
            ("x-long", &long),
            ("binary\u{0}\u{ff}", "\u{1}\u{7f}"),
        ];
        let mut e = Encoder::new();
        let mut d = Decoder::new(0);
        for _ in 0..2 {
            let mut out = Vec::new();
            e.encode(list.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())), &mut out);
            assert_eq!(d.decode(&out, usize::MAX).unwrap(), fields(&list));
        }
    }

    /// Huffman-coded literals of every octet, and names, through the whole decoder.
    #[test]
    fn huffman_literals_round_trip() {
        let value: Vec<u8> = (0..=255).collect();
        let coded = huffman::encode(&value);
        let name = huffman::encode(b"name");
        let mut block = vec![0x40];
        put_integer(&mut block, 0x80, 7, name.len());
        block.extend_from_slice(&name);
        put_integer(&mut block, 0x80, 7, coded.len());
        block.extend_from_slice(&coded);
        let want = Field { name: Bytes::from_static(b"name"), value: value.into() };
        assert_eq!(decode(&block), Ok(vec![want]));
    }
}
