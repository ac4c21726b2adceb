//! Properties of the conversion of what the control plane sends (xDS `Address` and
//! `Authorization` resources) into ztunnel's state, and of the DNS proxy's reading of what pods
//! send, checked on arbitrary bytes: the same checks
//! for the libFuzzer target in `fuzz/` and for the test below, which replays the committed
//! corpus (`fuzz/corpus/xds_resource/`) and seeded mutations of it (see `hbone::fuzzing`).
//! Feature `fuzzing` (or this crate's own tests).

use prost::Message;
use proto::istio::security::Authorization;
use proto::istio::workload::Address as PbAddress;

use crate::state::convert::{Address, policy_fail_closed};
use crate::state::policy::Policy;

/// The first byte picks the type (even: `Address`, odd: `Authorization`), the rest is the
/// encoded resource. Decoding and converting never panic and give the same result twice; and
/// a policy is kept as written exactly when strict conversion accepts it, otherwise it is kept
/// unusable (so it denies instead of being dropped or widened).
pub fn xds_resource(data: &[u8]) {
    let Some((kind, body)) = data.split_first() else { return };
    if kind % 2 == 0 {
        let Ok(a) = PbAddress::decode(body) else { return };
        let first = Address::try_from(a.clone()).map_err(|e| e.to_string());
        assert_eq!(first, Address::try_from(a).map_err(|e| e.to_string()));
        return;
    }
    let Ok(a) = Authorization::decode(body) else { return };
    let strict = Policy::try_from(a.clone());
    let Ok(kept) = policy_fail_closed(a) else {
        assert!(strict.is_err(), "a policy fail-closed conversion refuses is refused strictly too");
        return;
    };
    match strict {
        Ok(p) => {
            assert_eq!(p, kept);
            assert!(kept.unusable.is_none(), "{kept:?}");
        }
        Err(e) => assert!(kept.unusable.is_some(), "a defective policy ({e}) is kept usable: {kept:?}"),
    }
}

/// A message a pod sent to the DNS proxy (the bytes of one UDP datagram). Reading it never
/// panics; a query read from it names a hostname-shaped name of at most 253 characters, and the
/// answers built for it keep to the size limit, read back with its id, the addresses of the asked family in order, and the truncation
/// bit exactly when some did not fit. A FORMERR is built for any non-response with a header.
pub fn dns_message(data: &[u8]) {
    use std::net::IpAddr;

    use crate::dns::message::{self, Query, Rcode, TYPE_A, TYPE_AAAA};

    let fe = message::format_error(data);
    if let Some(fe) = &fe {
        let a = message::read_answer(fe).expect("a FORMERR reads back");
        assert_eq!((Some(a.id), a.rcode), (message::id(data), Rcode::FormErr as u8));
    }
    let _ = message::read_answer(data);
    let Ok(q) = Query::parse(data) else { return };
    assert!(fe.is_some(), "a query gets a FORMERR when it must");
    if let Some(name) = &q.name {
        assert!(name.len() <= 253, "{name}");
        assert!(!name.starts_with('.') && !name.ends_with('.') && !name.contains(".."), "{name:?}");
        assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_*.".contains(&b)), "{name:?}");
    }
    // Addresses of both families, as many as a byte of the input says.
    let n = usize::from(data.last().copied().unwrap_or(0) % 64);
    let addrs: Vec<IpAddr> = (0..n)
        .map(|i| {
            if i % 3 == 0 {
                IpAddr::from([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, i as u8])
            } else {
                IpAddr::from([10, 0, 0, i as u8])
            }
        })
        .collect();
    let wanted: Vec<IpAddr> = addrs
        .iter()
        .copied()
        .filter(|a| (q.qtype == TYPE_A && a.is_ipv4()) || (q.qtype == TYPE_AAAA && a.is_ipv6()))
        .collect();
    for limit in [message::CLASSIC_UDP_MAX, q.udp_limit(), usize::from(u16::MAX)] {
        let bytes = q.answer(&addrs, 30, limit);
        // Header and question alone (at most 12 + 255 + 4 bytes) always fit the smallest limit.
        assert!(bytes.len() <= limit, "{} > {limit}", bytes.len());
        let a = message::read_answer(&bytes).expect("our answer reads back");
        assert_eq!((a.id, a.rcode, a.authoritative), (q.id, 0, true));
        assert_eq!(a.addrs, wanted[..a.addrs.len()], "the addresses of the asked family, in order");
        assert_eq!(a.truncated, a.addrs.len() < wanted.len(), "truncated exactly when some did not fit");
        assert_eq!(a.edns_udp_size, q.edns_udp_size.map(|_| message::OPT_UDP_SIZE), "OPT back exactly for EDNS");
    }
    let sf = message::read_answer(&q.error(Rcode::ServFail)).expect("a SERVFAIL reads back");
    assert_eq!((sf.id, sf.rcode, sf.addrs.len()), (q.id, Rcode::ServFail as u8, 0));
}

#[cfg(test)]
mod tests {
    use super::*;
    use hbone::fuzzing::replay;

    #[test]
    fn dns_messages() {
        let tokens: &[&[u8]] = &[b"\x00", b"\xc0\x0c", b"\x00\x01", b"\x00\x1c", b"\x00\x29", b"\x3f", b"\x81\x80"];
        replay("dns_message", Vec::new(), tokens, 20_000, dns_message);
    }

    #[test]
    fn xds_resources() {
        let tokens: &[&[u8]] = &[b"\x00", b"\x01", b"\x0a", b"\x12", b"\x1a", b"\xff\xff\xff\xff\x0f", b"spiffe://"];
        replay("xds_resource", Vec::new(), tokens, 20_000, xds_resource);
    }
}
