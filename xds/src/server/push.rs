//! A push on the wire: an `envoy.service.discovery.v3.DeltaDiscoveryResponse` whose resources
//! are already encoded. The store encodes each `Resource` once when it changes; every stream
//! then sends those same bytes, so a full sync of N streams costs N references per resource
//! instead of N copies of it (and no re-encoding).

use bytes::{BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType, bytes as pb_bytes, skip_field, string};
use prost::{DecodeError, Message};
use prost_types::Any;
use proto::envoy::service::discovery::v3::Resource;

/// Field numbers of `DeltaDiscoveryResponse`.
const SYSTEM_VERSION_INFO: u32 = 1;
const RESOURCES: u32 = 2;
const TYPE_URL: u32 = 4;
const NONCE: u32 = 5;
const REMOVED_RESOURCES: u32 = 6;

/// The encoded `Resource` of a stored resource: name, version and body.
pub(crate) fn encode_resource(name: &str, version: &str, body: &Any) -> Bytes {
    let resource = Resource {
        name: name.to_owned(),
        version: version.to_owned(),
        resource: Some(body.clone()),
        ..Default::default()
    };
    resource.encode_to_vec().into()
}

/// One delta response, encoded field by field as `DeltaDiscoveryResponse` would be. Only ever
/// encoded: the server never receives one.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Push {
    pub(crate) system_version_info: String,
    /// Each an encoded `Resource` (see [`encode_resource`]).
    pub(crate) resources: Vec<Bytes>,
    pub(crate) type_url: String,
    pub(crate) nonce: String,
    pub(crate) removed_resources: Vec<String>,
}

impl Message for Push {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        // Proto3 leaves empty scalars out; a repeated message is its encoded bytes, length
        // delimited, exactly as `bytes` are.
        if !self.system_version_info.is_empty() {
            string::encode(SYSTEM_VERSION_INFO, &self.system_version_info, buf);
        }
        pb_bytes::encode_repeated(RESOURCES, &self.resources, buf);
        if !self.type_url.is_empty() {
            string::encode(TYPE_URL, &self.type_url, buf);
        }
        if !self.nonce.is_empty() {
            string::encode(NONCE, &self.nonce, buf);
        }
        string::encode_repeated(REMOVED_RESOURCES, &self.removed_resources, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl bytes::Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let text = |tag, s: &String| if s.is_empty() { 0 } else { string::encoded_len(tag, s) };
        text(SYSTEM_VERSION_INFO, &self.system_version_info)
            + pb_bytes::encoded_len_repeated(RESOURCES, &self.resources)
            + text(TYPE_URL, &self.type_url)
            + text(NONCE, &self.nonce)
            + string::encoded_len_repeated(REMOVED_RESOURCES, &self.removed_resources)
    }

    fn clear(&mut self) {
        *self = Push::default();
    }
}

#[cfg(test)]
mod tests {
    use proto::envoy::service::discovery::v3::DeltaDiscoveryResponse;

    use super::*;

    #[test]
    fn a_push_decodes_as_the_delta_response_it_stands_for() {
        let body = Any { type_url: "type.googleapis.com/t".into(), value: vec![1, 2, 3] };
        let push = Push {
            system_version_info: "7".into(),
            resources: vec![encode_resource("a", "v1", &body), encode_resource("b/c", "v2", &Any::default())],
            type_url: "type.googleapis.com/t".into(),
            nonce: "1-2".into(),
            removed_resources: vec!["gone".into(), "also".into()],
        };
        let bytes = push.encode_to_vec();
        assert_eq!(bytes.len(), push.encoded_len());
        let decoded = DeltaDiscoveryResponse::decode(bytes.as_slice()).unwrap();
        let expected = DeltaDiscoveryResponse {
            system_version_info: "7".into(),
            resources: vec![
                Resource { name: "a".into(), version: "v1".into(), resource: Some(body), ..Default::default() },
                Resource {
                    name: "b/c".into(),
                    version: "v2".into(),
                    resource: Some(Any::default()),
                    ..Default::default()
                },
            ],
            type_url: "type.googleapis.com/t".into(),
            nonce: "1-2".into(),
            removed_resources: vec!["gone".into(), "also".into()],
            ..Default::default()
        };
        assert_eq!(decoded, expected);
        // And the same bytes as prost's own encoding of that response.
        assert_eq!(bytes, expected.encode_to_vec());
        assert!(Push::default().encode_to_vec().is_empty());
    }
}
