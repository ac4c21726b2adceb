//! Reading classic pcap files (what `tcpdump -w` writes), so tests can count packets and search
//! payloads without another tool.

use std::net::Ipv4Addr;
use std::path::Path;

use crate::Error;

/// Link type of Ethernet captures.
pub const LINKTYPE_ETHERNET: u32 = 1;

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Bytes captured (the frame, from the link-layer header on).
    pub data: Vec<u8>,
    /// Length of the frame on the wire.
    pub orig_len: u32,
}

/// Source, destination and protocol of an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Header {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP protocol number (6 = TCP).
    pub protocol: u8,
}

impl Packet {
    /// The IPv4 header of an Ethernet frame, if it carries IPv4.
    pub fn ipv4(&self) -> Option<Ipv4Header> {
        let d = &self.data;
        if d.len() < 34 || d[12..14] != [0x08, 0x00] || d[14] >> 4 != 4 {
            return None;
        }
        let ip = |o: usize| Ipv4Addr::new(d[o], d[o + 1], d[o + 2], d[o + 3]);
        Some(Ipv4Header { src: ip(26), dst: ip(30), protocol: d[23] })
    }

    /// Whether `needle` occurs anywhere in the captured bytes.
    pub fn contains(&self, needle: &[u8]) -> bool {
        !needle.is_empty() && self.data.windows(needle.len()).any(|w| w == needle)
    }
}

/// Parses a whole pcap file (either byte order, micro- or nanosecond timestamps).
pub fn parse(bytes: &[u8], path: &Path) -> Result<(u32, Vec<Packet>), Error> {
    let bad = |reason: &str| Error::Pcap { path: path.to_owned(), reason: reason.to_owned() };
    if bytes.len() < 24 {
        return Err(bad("shorter than the 24-byte file header"));
    }
    let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
    let little = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => return Err(bad("unknown magic number (pcapng is not supported)")),
    };
    let u32_at = |o: usize| {
        let b = [bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]];
        if little { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) }
    };
    let linktype = u32_at(20);
    let mut packets = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        if at + 16 > bytes.len() {
            // tcpdump killed mid-write leaves a partial record; what came before is good.
            break;
        }
        let incl = u32_at(at + 8) as usize;
        let orig_len = u32_at(at + 12);
        let start = at + 16;
        let Some(end) = start.checked_add(incl).filter(|e| *e <= bytes.len()) else { break };
        packets.push(Packet { data: bytes[start..end].to_vec(), orig_len });
        at = end;
    }
    Ok((linktype, packets))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(frames: &[&[u8]]) -> Vec<u8> {
        let mut f = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0, 0];
        for fr in frames {
            f.extend_from_slice(&[0; 8]);
            f.extend_from_slice(&(fr.len() as u32).to_le_bytes());
            f.extend_from_slice(&(fr.len() as u32).to_le_bytes());
            f.extend_from_slice(fr);
        }
        f
    }

    fn ipv4_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 0, 0, 0, 0, 0, 64, 6, 0, 0]);
        f.extend_from_slice(&[10, 244, 1, 2, 10, 244, 2, 3]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn reads_frames_headers_and_payloads() {
        let a = ipv4_frame(b"GET / HTTP/1.1");
        let b = [0u8; 20];
        let bytes = file(&[&a, &b]);
        let (link, pkts) = parse(&bytes, Path::new("t.pcap")).unwrap();
        assert_eq!(link, LINKTYPE_ETHERNET);
        assert_eq!(pkts.len(), 2);
        let h = pkts[0].ipv4().unwrap();
        assert_eq!((h.src, h.dst, h.protocol), (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 2, 3), 6));
        assert!(pkts[0].contains(b"HTTP/1.1"));
        assert!(!pkts[1].contains(b"HTTP/1.1"));
        assert_eq!(pkts[1].ipv4(), None);
    }

    #[test]
    fn truncated_tail_and_garbage() {
        let mut bytes = file(&[&ipv4_frame(b"x")]);
        bytes.extend_from_slice(&[1, 2, 3]);
        assert_eq!(parse(&bytes, Path::new("t")).unwrap().1.len(), 1);
        let err = parse(b"not a pcap file at all, sorry", Path::new("t.pcap")).unwrap_err();
        assert!(err.to_string().contains("t.pcap"), "{err}");
    }
}
