//! The part of the DNS wire format (RFC 1035) the proxy reads and writes itself: the header and
//! the one question of a standard query, and answers of A and AAAA records. Everything else is
//! relayed to the upstream resolver as bytes, never re-encoded, so options and record types this
//! module does not know pass through unchanged.
//!
//! The bytes come from the pod, which may be anything; [`Query::parse`] never panics and never
//! allocates more than the name (at most 255 bytes), whatever it is given (fuzzed by
//! `crate::fuzzing::dns_message`).

use std::net::IpAddr;

/// A DNS header is 12 bytes.
pub const HEADER_LEN: usize = 12;
/// The largest UDP answer a client without EDNS accepts (RFC 1035 §4.2.1).
pub const CLASSIC_UDP_MAX: usize = 512;

/// Record type A.
pub const TYPE_A: u16 = 1;
/// Record type AAAA.
pub const TYPE_AAAA: u16 = 28;
/// Record type OPT (EDNS, RFC 6891).
const TYPE_OPT: u16 = 41;
/// Bytes of our OPT record: root name, type, class (UDP size), TTL (flags), empty data.
const OPT_LEN: usize = 1 + 2 + 2 + 4 + 2;
/// The UDP payload size our OPT record advertises: the size DNS flag day 2020 settled on, which
/// fits any path's MTU without fragments.
pub const OPT_UDP_SIZE: u16 = 1232;
/// Class IN.
pub const CLASS_IN: u16 = 1;

const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;
const OPCODE_MASK: u16 = 0x7800;

/// Response codes the proxy answers with itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rcode {
    /// The name exists; the answer section may be empty (no record of the asked type).
    NoError = 0,
    /// The query could not be read.
    FormErr = 1,
    /// No upstream answered.
    ServFail = 2,
}

/// The extended response code BADVERS (RFC 6891 §6.1.3): the query's EDNS version is one we do
/// not speak. Its upper 8 bits go in the OPT record's TTL, its lower 4 (0) in the header.
pub const BADVERS: u16 = 16;

/// The response code NXDOMAIN: the name does not exist, with no record of any type.
pub const NXDOMAIN: u8 = 3;

/// The response code (its header's 4 bits) of `msg`, if it has a header.
pub fn rcode(msg: &[u8]) -> Option<u8> {
    if msg.len() < HEADER_LEN {
        return None;
    }
    Some(msg[3] & 0x0F)
}

/// Why a message is not a query the proxy can read (it is then relayed upstream as it is, or,
/// when not even its header can be read, dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than a header, or the question runs past the end.
    #[error("truncated message")]
    Truncated,
    /// A response, or an opcode other than QUERY.
    #[error("not a standard query")]
    NotAQuery,
    /// Not exactly one question (what every resolver sends).
    #[error("{0} questions")]
    QuestionCount(u16),
    /// A compression pointer or a label type other than a plain label in the question, or a
    /// name over 255 bytes.
    #[error("question name cannot be read")]
    BadName,
}

/// A standard query with one question, as read from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query<'a> {
    /// The message id, echoed in the answer.
    pub id: u16,
    /// Recursion desired, echoed in the answer.
    pub recursion_desired: bool,
    /// The name asked for, in lower case, without the trailing dot; `None` when a label holds a
    /// byte no hostname has (a dot, a control character, non-ASCII), which no service is named.
    pub name: Option<String>,
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS.
    pub qclass: u16,
    /// The question section as received, copied into the answer.
    question: &'a [u8],
    /// The UDP payload size the client's EDNS OPT record advertises, if it sent one.
    pub edns_udp_size: Option<u16>,
    /// The EDNS version of the client's OPT record, if it sent one: we speak 0 only, and answer
    /// a higher one with [`Query::bad_version`].
    pub edns_version: Option<u8>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// The message id of `msg`, if it has a header.
pub fn id(msg: &[u8]) -> Option<u16> {
    u16_at(msg, 0)
}

impl<'a> Query<'a> {
    /// Reads a query.
    pub fn parse(msg: &'a [u8]) -> Result<Query<'a>, ParseError> {
        if msg.len() < HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        let id = u16_at(msg, 0).ok_or(ParseError::Truncated)?;
        let flags = u16_at(msg, 2).ok_or(ParseError::Truncated)?;
        if flags & FLAG_QR != 0 || flags & OPCODE_MASK != 0 {
            return Err(ParseError::NotAQuery);
        }
        let counts = |at| u16_at(msg, at).ok_or(ParseError::Truncated);
        let (qd, an, ns, ar) = (counts(4)?, counts(6)?, counts(8)?, counts(10)?);
        if qd != 1 {
            return Err(ParseError::QuestionCount(qd));
        }
        let (name, end) = read_name(msg, HEADER_LEN)?;
        let qtype = u16_at(msg, end).ok_or(ParseError::Truncated)?;
        let qclass = u16_at(msg, end + 2).ok_or(ParseError::Truncated)?;
        let question = &msg[HEADER_LEN..end + 4];
        // A query carries its OPT record alone in the additional section.
        let opt = if an == 0 && ns == 0 && ar == 1 { read_opt(msg, end + 4) } else { None };
        Ok(Query {
            id,
            recursion_desired: flags & FLAG_RD != 0,
            name,
            qtype,
            qclass,
            question,
            edns_udp_size: opt.map(|o| o.udp_size),
            edns_version: opt.map(|o| o.version),
        })
    }

    /// The largest UDP answer the client takes.
    pub fn udp_limit(&self) -> usize {
        // RFC 6891 §6.2.5: values below 512 are treated as 512.
        self.edns_udp_size.map_or(CLASSIC_UDP_MAX, |s| usize::from(s).max(CLASSIC_UDP_MAX))
    }

    /// An authoritative answer with `addrs` (those of the asked family, each one record with
    /// `ttl` seconds), as many as fit in `limit` bytes; the rest set the truncation bit, so the
    /// client asks again over TCP.
    pub fn answer(&self, addrs: &[IpAddr], ttl: u32, limit: usize) -> Vec<u8> {
        let mut out = self.header(FLAG_AA, Rcode::NoError);
        // An EDNS query gets an OPT record back (RFC 6891 §7), after the answers: keep room.
        let limit = limit.saturating_sub(if self.edns_udp_size.is_some() { OPT_LEN } else { 0 });
        let mut count: u16 = 0;
        for addr in addrs {
            let rdata: &[u8] = match addr {
                IpAddr::V4(v4) if self.qtype == TYPE_A => &v4.octets(),
                IpAddr::V6(v6) if self.qtype == TYPE_AAAA => &v6.octets(),
                _ => continue,
            };
            // Name (a pointer to the question's), type, class, TTL, length, data.
            let record_len = 2 + 2 + 2 + 4 + 2 + rdata.len();
            if out.len() + record_len > limit || count == u16::MAX {
                out[2] |= (FLAG_TC >> 8) as u8;
                break;
            }
            out.extend_from_slice(&[0xC0, HEADER_LEN as u8]);
            out.extend_from_slice(&self.qtype.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            out.extend_from_slice(rdata);
            count += 1;
        }
        out[6..8].copy_from_slice(&count.to_be_bytes());
        self.opt(&mut out);
        out
    }

    /// The upstream's answer `upstream` (its header at least), too long for the client's UDP
    /// limit, as its header with the truncation bit, the question as asked and our OPT record
    /// if the query had one: the client asks again over TCP (RFC 1035 §4.2.1, RFC 2181 §9).
    /// The question is kept because resolvers (glibc) drop an answer whose question is not
    /// theirs; the upstream's flags and rcode are kept because they are the upstream's word.
    pub fn truncated(&self, upstream: &[u8]) -> Vec<u8> {
        let flags = u16_at(upstream, 2).unwrap_or(FLAG_RA) | FLAG_QR | FLAG_TC;
        let mut out = self.header(0, Rcode::NoError);
        out[2..4].copy_from_slice(&flags.to_be_bytes());
        self.opt(&mut out);
        out
    }

    /// An answer with no records and `rcode` (e.g. SERVFAIL when no upstream answered).
    pub fn error(&self, rcode: Rcode) -> Vec<u8> {
        let mut out = self.header(0, rcode);
        self.opt(&mut out);
        out
    }

    /// Whether the query's EDNS version is one we do not speak (above 0), to be answered with
    /// [`Query::bad_version`] rather than read further or relayed.
    pub fn unsupported_edns_version(&self) -> bool {
        self.edns_version.is_some_and(|v| v > 0)
    }

    /// The answer to a query of an EDNS version above 0 (RFC 6891 §6.1.3): BADVERS, no records,
    /// our OPT record saying the version we speak (0), so the client may ask again with it.
    pub fn bad_version(&self) -> Vec<u8> {
        let mut out = self.header(0, Rcode::NoError);
        push_opt(&mut out, (BADVERS >> 4) as u8);
        out
    }

    /// Appends our OPT record if the query had one.
    fn opt(&self, out: &mut Vec<u8>) {
        if self.edns_udp_size.is_some() {
            push_opt(out, 0);
        }
    }

    /// Header and question of an answer.
    fn header(&self, extra_flags: u16, rcode: Rcode) -> Vec<u8> {
        let rd = if self.recursion_desired { FLAG_RD } else { 0 };
        let flags = FLAG_QR | extra_flags | rd | FLAG_RA | rcode as u16;
        let mut out = Vec::with_capacity(HEADER_LEN + self.question.len() + 64);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&[0; 6]);
        out.extend_from_slice(self.question);
        out
    }
}

/// Appends our OPT record to `out` (header and sections before it) and counts it in ARCOUNT:
/// version 0, no flags or options, the UDP size we take ([`OPT_UDP_SIZE`]), and the upper 8 bits
/// of an extended response code (0 for the codes of the header alone).
fn push_opt(out: &mut Vec<u8>, extended_rcode: u8) {
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&OPT_UDP_SIZE.to_be_bytes());
    // TTL: extended RCODE, VERSION, DO and Z; then RDLENGTH.
    out.extend_from_slice(&[extended_rcode, 0, 0, 0, 0, 0]);
    out[10..12].copy_from_slice(&1u16.to_be_bytes());
}

/// A FORMERR for a message whose header could be read but not its question.
pub fn format_error(msg: &[u8]) -> Option<Vec<u8>> {
    let id = id(msg)?;
    let flags = u16_at(msg, 2)?;
    if flags & FLAG_QR != 0 {
        return None;
    }
    let flags = FLAG_QR | (flags & (OPCODE_MASK | FLAG_RD)) | FLAG_RA | Rcode::FormErr as u16;
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    Some(out)
}

/// Reads an uncompressed name at `at`: the lower-cased dotted name (if every byte is one a
/// hostname may have) and where the name ends.
fn read_name(msg: &[u8], mut at: usize) -> Result<(Option<String>, usize), ParseError> {
    let mut name = String::new();
    let mut plain = true;
    let mut wire_len = 0usize;
    loop {
        let len = *msg.get(at).ok_or(ParseError::Truncated)? as usize;
        at += 1;
        wire_len += 1 + len;
        if wire_len > 255 {
            return Err(ParseError::BadName);
        }
        if len == 0 {
            break;
        }
        // 0xC0: a compression pointer, 0x40/0x80: extended label types; queries carry neither.
        if len & 0xC0 != 0 {
            return Err(ParseError::BadName);
        }
        let label = msg.get(at..at + len).ok_or(ParseError::Truncated)?;
        at += len;
        if plain {
            if !label.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_' || *b == b'*') {
                plain = false;
                continue;
            }
            if !name.is_empty() {
                name.push('.');
            }
            name.extend(label.iter().map(|b| b.to_ascii_lowercase() as char));
        }
    }
    Ok((plain.then_some(name), at))
}

/// What the proxy reads of an OPT record.
#[derive(Clone, Copy, Debug)]
struct Opt {
    /// The CLASS field: the sender's UDP payload size.
    udp_size: u16,
    /// The upper 8 bits of the extended RCODE (the TTL's first byte).
    extended_rcode: u8,
    /// The EDNS version (the TTL's second byte).
    version: u8,
}

/// The OPT record at `at` (root name, type 41, class = the UDP size, TTL = extended RCODE,
/// version and flags), if there is one.
fn read_opt(msg: &[u8], at: usize) -> Option<Opt> {
    if *msg.get(at)? != 0 || u16_at(msg, at + 1)? != TYPE_OPT {
        return None;
    }
    Some(Opt { udp_size: u16_at(msg, at + 3)?, extended_rcode: *msg.get(at + 5)?, version: *msg.get(at + 6)? })
}

/// Builds a query (tests, fuzzing and the e2e client use it).
pub fn build_query(id: u16, name: &str, qtype: u16, edns_udp_size: Option<u16>) -> Vec<u8> {
    build_query_edns(id, name, qtype, edns_udp_size, 0)
}

/// Builds a query whose OPT record (if `edns_udp_size` is given) says EDNS version `version`.
pub fn build_query_edns(id: u16, name: &str, qtype: u16, edns_udp_size: Option<u16>, version: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + name.len() + 16);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&FLAG_RD.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&u16::from(edns_udp_size.is_some()).to_be_bytes());
    for label in name.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        out.push(label.len().min(63) as u8);
        out.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    if let Some(size) = edns_udp_size {
        out.push(0);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&[0, version, 0, 0, 0, 0]);
    }
    out
}

/// What an answer says, as far as A and AAAA records go (tests and the e2e client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The message id.
    pub id: u16,
    /// The response code of the header (its lower 4 bits, when the OPT record extends it).
    pub rcode: u8,
    /// The response code with the upper 8 bits an OPT record adds (RFC 6891 §6.1.3); the
    /// header's alone without one.
    pub extended_rcode: u16,
    /// Authoritative.
    pub authoritative: bool,
    /// Truncated.
    pub truncated: bool,
    /// The addresses of A and AAAA records in the answer section.
    pub addrs: Vec<IpAddr>,
    /// The UDP size of an OPT record in the additional section, if there is one.
    pub edns_udp_size: Option<u16>,
    /// The EDNS version of that OPT record.
    pub edns_version: Option<u8>,
}

/// Reads an answer's A and AAAA records; names in the answer may be compressed.
pub fn read_answer(msg: &[u8]) -> Option<Answer> {
    let flags = u16_at(msg, 2)?;
    if flags & FLAG_QR == 0 {
        return None;
    }
    let qd = u16_at(msg, 4)?;
    let an = u16_at(msg, 6)?;
    let mut at = HEADER_LEN;
    for _ in 0..qd {
        at = skip_name(msg, at)? + 4;
    }
    let mut addrs = Vec::new();
    for _ in 0..an {
        at = skip_name(msg, at)?;
        let rtype = u16_at(msg, at)?;
        let len = usize::from(u16_at(msg, at + 8)?);
        let data = msg.get(at + 10..at + 10 + len)?;
        match (rtype, len) {
            (TYPE_A, 4) => addrs.push(IpAddr::from(<[u8; 4]>::try_from(data).ok()?)),
            (TYPE_AAAA, 16) => addrs.push(IpAddr::from(<[u8; 16]>::try_from(data).ok()?)),
            _ => {}
        }
        at += 10 + len;
    }
    let ns = u16_at(msg, 8)?;
    let ar = u16_at(msg, 10)?;
    let opt = if ns == 0 && ar == 1 { read_opt(msg, at) } else { None };
    let rcode = (flags & 0x000F) as u8;
    Some(Answer {
        id: u16_at(msg, 0)?,
        rcode,
        extended_rcode: u16::from(opt.map_or(0, |o| o.extended_rcode)) << 4 | u16::from(rcode),
        authoritative: flags & FLAG_AA != 0,
        truncated: flags & FLAG_TC != 0,
        addrs,
        edns_udp_size: opt.map(|o| o.udp_size),
        edns_version: opt.map(|o| o.version),
    })
}

fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xC0 == 0xC0 => return Some(at + 2),
            l => at += 1 + usize::from(l),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_read_and_answered_with_the_records_of_its_family() {
        let q = build_query(0x1234, "Reviews.Shop.svc.cluster.local.", TYPE_A, None);
        let query = Query::parse(&q).unwrap();
        assert_eq!(query.name.as_deref(), Some("reviews.shop.svc.cluster.local"));
        assert_eq!((query.id, query.qtype, query.qclass, query.udp_limit()), (0x1234, TYPE_A, CLASS_IN, 512));
        let addrs: Vec<IpAddr> = vec!["10.96.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        let a = read_answer(&query.answer(&addrs, 30, 512)).unwrap();
        assert_eq!(
            a,
            Answer {
                id: 0x1234,
                rcode: 0,
                extended_rcode: 0,
                authoritative: true,
                truncated: false,
                addrs: vec![addrs[0]],
                edns_udp_size: None,
                edns_version: None,
            }
        );

        let q6 = build_query(7, "reviews.shop.svc.cluster.local", TYPE_AAAA, Some(1232));
        let query6 = Query::parse(&q6).unwrap();
        assert_eq!(query6.udp_limit(), 1232);
        let a6 = read_answer(&query6.answer(&addrs, 30, 1232)).unwrap();
        assert_eq!(a6.addrs, vec![addrs[1]]);
        assert_eq!(a6.edns_udp_size, Some(OPT_UDP_SIZE), "an EDNS query gets an OPT record back");
        assert_eq!(read_answer(&query6.error(Rcode::ServFail)).unwrap().edns_udp_size, Some(OPT_UDP_SIZE));
        // The name exists but has no record of this family: NOERROR, no answer (NODATA).
        let none = read_answer(&query6.answer(&addrs[..1], 30, 512)).unwrap();
        assert_eq!((none.rcode, none.addrs.len()), (0, 0));
    }

    #[test]
    fn answers_past_the_limit_set_the_truncation_bit() {
        let q = build_query(1, "many.ns.svc.cluster.local", TYPE_A, None);
        let query = Query::parse(&q).unwrap();
        let addrs: Vec<IpAddr> = (0..100u8).map(|i| IpAddr::from([10, 0, 0, i])).collect();
        let bytes = query.answer(&addrs, 30, 512);
        assert!(bytes.len() <= 512);
        let a = read_answer(&bytes).unwrap();
        assert!(a.truncated && !a.addrs.is_empty() && a.addrs.len() < 100, "{a:?}");
        assert_eq!(a.addrs, addrs[..a.addrs.len()]);
    }

    #[test]
    fn what_is_not_a_readable_query_says_why() {
        assert_eq!(Query::parse(&[0; 11]), Err(ParseError::Truncated));
        let mut resp = build_query(1, "a.b", TYPE_A, None);
        resp[2] |= 0x80;
        assert_eq!(Query::parse(&resp), Err(ParseError::NotAQuery));
        let mut two = build_query(1, "a.b", TYPE_A, None);
        two[5] = 2;
        assert_eq!(Query::parse(&two), Err(ParseError::QuestionCount(2)));
        let mut pointer = build_query(1, "a.b", TYPE_A, None);
        pointer[12] = 0xC0;
        assert_eq!(Query::parse(&pointer), Err(ParseError::BadName));
        let cut = build_query(1, "a.b", TYPE_A, None);
        assert_eq!(Query::parse(&cut[..cut.len() - 1]), Err(ParseError::Truncated));
        // 300 bytes of labels: longer than any name may be.
        let long = build_query(1, &["abcdefghij"; 30].join("."), TYPE_A, None);
        assert_eq!(Query::parse(&long), Err(ParseError::BadName));
        // A readable question with an odd byte: a query, but no service has that name.
        let mut odd = build_query(1, "a.b", TYPE_A, None);
        odd[13] = b'.';
        assert_eq!(Query::parse(&odd).unwrap().name, None);
        // FORMERR keeps the id and says it is a response.
        let fe = read_answer(&format_error(&two).unwrap()).unwrap();
        assert_eq!((fe.id, fe.rcode), (1, 1));
        assert_eq!(format_error(&resp), None, "never answer a response");
    }

    #[test]
    fn a_truncated_relayed_answer_keeps_the_upstreams_header_and_our_question() {
        let q = build_query(5, "Www.Example.org", TYPE_A, Some(1232));
        let query = Query::parse(&q).unwrap();
        let mut upstream = query.answer(&[IpAddr::from([192, 0, 2, 1])], 60, 512);
        upstream[3] |= 3; // NXDOMAIN, as the upstream said it
        let bytes = query.truncated(&upstream[..HEADER_LEN]);
        let a = read_answer(&bytes).unwrap();
        assert_eq!((a.id, a.rcode, a.truncated, a.authoritative), (5, 3, true, true));
        assert_eq!((a.addrs.len(), a.edns_udp_size), (0, Some(OPT_UDP_SIZE)));
        assert_eq!(&bytes[HEADER_LEN..q.len() - OPT_LEN], &q[HEADER_LEN..q.len() - OPT_LEN]);
        assert_eq!(u16_at(&bytes, 4), Some(1), "one question");
    }

    #[test]
    fn a_query_of_an_edns_version_above_0_is_badvers_with_our_opt_at_version_0() {
        let q = build_query_edns(0x4242, "reviews.shop.svc.cluster.local", TYPE_A, Some(4096), 1);
        let query = Query::parse(&q).unwrap();
        assert_eq!((query.edns_version, query.unsupported_edns_version()), (Some(1), true));
        let bytes = query.bad_version();
        let a = read_answer(&bytes).unwrap();
        // RFC 6891 §6.1.3: 16 is 0 in the header and 1 in the OPT TTL's upper 8 bits.
        assert_eq!((a.id, a.rcode, a.extended_rcode), (0x4242, 0, BADVERS), "{a:?}");
        assert_eq!((a.edns_version, a.edns_udp_size), (Some(0), Some(OPT_UDP_SIZE)), "our OPT, at version 0");
        assert_eq!((a.addrs.len(), a.authoritative, a.truncated), (0, false, false));
        assert_eq!(&bytes[HEADER_LEN..q.len() - OPT_LEN], &q[HEADER_LEN..q.len() - OPT_LEN], "the question");
        assert_eq!(&bytes[q.len() - OPT_LEN + 5..q.len() - OPT_LEN + 7], &[1, 0], "TTL: extended RCODE 1, VERSION 0");

        // Version 0, and no OPT at all, are ours: read on, answered with plain codes.
        let (q0, q_plain) = (build_query(1, "a.b", TYPE_A, Some(1232)), build_query(1, "a.b", TYPE_A, None));
        let v0 = Query::parse(&q0).unwrap();
        assert_eq!((v0.edns_version, v0.unsupported_edns_version()), (Some(0), false));
        let plain = Query::parse(&q_plain).unwrap();
        assert_eq!((plain.edns_version, plain.unsupported_edns_version()), (None, false));
        let sf = read_answer(&v0.error(Rcode::ServFail)).unwrap();
        assert_eq!((sf.rcode, sf.extended_rcode, sf.edns_version), (2, 2, Some(0)));
    }

    #[test]
    fn an_error_answer_echoes_the_question() {
        let q = build_query(9, "gone.example.com", TYPE_AAAA, None);
        let query = Query::parse(&q).unwrap();
        let bytes = query.error(Rcode::ServFail);
        let a = read_answer(&bytes).unwrap();
        assert_eq!((a.id, a.rcode, a.authoritative, a.addrs.len()), (9, 2, false, 0));
        assert_eq!(&bytes[HEADER_LEN..], &q[HEADER_LEN..], "the question, as asked");
    }
}
