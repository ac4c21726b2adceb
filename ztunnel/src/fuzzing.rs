//! Properties of the conversion of what the control plane sends (xDS `Address` and
//! `Authorization` resources) into ztunnel's state, checked on arbitrary bytes: the same checks
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

#[cfg(test)]
mod tests {
    use super::*;
    use hbone::fuzzing::replay;

    #[test]
    fn xds_resources() {
        let tokens: &[&[u8]] = &[b"\x00", b"\x01", b"\x0a", b"\x12", b"\x1a", b"\xff\xff\xff\xff\x0f", b"spiffe://"];
        replay("xds_resource", Vec::new(), tokens, 20_000, xds_resource);
    }
}
