//! The property of the gRPC message reader (`grpc::Messages`), which reads what any client
//! that opens an ADS stream sends the control plane (and what the control plane pushes),
//! checked on arbitrary bytes: the same check for the libFuzzer target in `fuzz/` and for the
//! test below, which replays `fuzz/corpus/grpc_messages/` and seeded mutations of it (see
//! `hbone::fuzzing`). Feature `fuzzing` (or this crate's own tests).

use std::collections::VecDeque;
use std::future::Future as _;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::Frame;
use prost::Message;
use proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tonic::Code;

use crate::grpc::{Frames, Messages};

/// The bound the check reads under: small, so that arbitrary lengths cross it.
const MAX: usize = 4096;

/// The first byte sets how the rest is cut into the body's chunks (sizes 1 to 64, in turn);
/// the rest is the body. The reader gives exactly the messages the bytes frame, in order, and
/// then the end, or the error gRPC's rules give at the first bad frame (a compressed flag, a
/// length above the bound, bytes that are not a request, a body ending inside a message); and
/// between messages it holds no more than twice what arrived: never what a length only claims.
pub fn grpc_messages(data: &[u8]) {
    let Some((&cut, body)) = data.split_first() else { return };
    let step = usize::from(cut % 64) + 1;
    let mut chunks = VecDeque::new();
    let (mut at, mut size) = (0, step);
    while at < body.len() {
        let end = (at + size).min(body.len());
        chunks.push_back(Frame::data(Bytes::copy_from_slice(&body[at..end])));
        at = end;
        size = size % 64 + 1;
    }
    let mut reader = Messages::<DeltaDiscoveryRequest>::new(Frames(chunks), MAX, "request");
    let mut cx = Context::from_waker(Waker::noop());
    let mut rest = body;
    loop {
        // The body is always ready, so one poll finishes every read.
        let got = match std::pin::pin!(reader.message()).poll(&mut cx) {
            Poll::Ready(got) => got,
            Poll::Pending => panic!("a read of a ready body is pending"),
        };
        assert!(reader.capacity() <= 2 * body.len() + 64, "{} held for {} bytes", reader.capacity(), body.len());
        match expected(&mut rest) {
            Ok(Some(want)) => assert_eq!(got.expect("a well-framed request"), Some(want)),
            Ok(None) => return assert_eq!(got.expect("the end"), None),
            Err(code) => return assert_eq!(got.expect_err("a bad frame").code(), code),
        }
    }
}

/// What the next read of `rest` must give, by gRPC's framing alone.
fn expected(rest: &mut &[u8]) -> Result<Option<DeltaDiscoveryRequest>, Code> {
    if rest.is_empty() {
        return Ok(None);
    }
    if rest.len() < 5 {
        return Err(Code::Internal);
    }
    if rest[0] != 0 {
        return Err(Code::Internal);
    }
    let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
    if len > MAX {
        return Err(Code::OutOfRange);
    }
    if rest.len() < 5 + len {
        return Err(Code::Internal);
    }
    let message = DeltaDiscoveryRequest::decode(&rest[5..5 + len]).map_err(|_| Code::Internal)?;
    *rest = &rest[5 + len..];
    Ok(Some(message))
}

#[cfg(test)]
mod tests {
    use hbone::fuzzing::replay;

    use super::*;

    /// A few well-framed requests (`<cut> <frames...>`), beside the committed corpus.
    fn seeds() -> Vec<Vec<u8>> {
        let framed = |r: DeltaDiscoveryRequest| crate::grpc::frame(&r).unwrap().to_vec();
        let first = DeltaDiscoveryRequest {
            type_url: "type.googleapis.com/istio.workload.Address".into(),
            resource_names_subscribe: vec!["*".into()],
            ..Default::default()
        };
        let ack = DeltaDiscoveryRequest { response_nonce: "1".into(), ..Default::default() };
        let mut two = vec![7];
        two.extend(framed(first.clone()));
        two.extend(framed(ack));
        vec![[vec![0], framed(first)].concat(), two]
    }

    #[test]
    fn grpc_messages_corpus() {
        let tokens: &[&[u8]] = &[&[0, 0, 0, 0, 0], &[0, 0, 0, 16, 1], &[1], &[0xff, 0xff, 0xff, 0xff]];
        replay("grpc_messages", seeds(), tokens, 20_000, grpc_messages);
    }
}
