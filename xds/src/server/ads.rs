//! The gRPC service `envoy.service.discovery.v3.AggregatedDiscoveryService`, written out rather
//! than generated: the generated one would make every push a `DeltaDiscoveryResponse` owning
//! its resources, while [`Push`] sends the store's encoded bytes (see [`super::push`]).
//!
//! Responses are framed here too ([`PushBody`], with [`crate::grpc::frame`]): tonic's encoder
//! writes every message of a stream into one buffer that it keeps for the stream's life at the
//! size of the largest message, so 50 proxies that each had a 3 MB first sync would pin
//! 50 × 4 MiB for good. Here each push gets a buffer of its own, freed once h2 has written it.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::Frame;
use tokio::sync::watch;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::{BoxFuture, Service, StdError, http};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::{Request, Status};

use super::XdsServer;
use super::push::Push;
use super::requests::Requests;

const DELTA: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
const STATE_OF_THE_WORLD: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// Decides whether a stream may open, from its request's metadata; an error is the status the
/// stream ends with (UNAUTHENTICATED, PERMISSION_DENIED).
pub type Authenticate = Arc<dyn Fn(&MetadataMap) -> BoxFuture<(), Status> + Send + Sync>;

/// The ADS service of an [`XdsServer`], to mount on a tonic server (see [`XdsServer::service`]).
#[derive(Clone)]
pub struct AdsService {
    server: XdsServer,
    auth: Option<Authenticate>,
    /// Set once the `serve` this service is mounted by shuts down.
    shutdown: Option<watch::Receiver<bool>>,
}

impl std::fmt::Debug for AdsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdsService").field("server", &self.server).field("authenticated", &self.auth.is_some()).finish()
    }
}

impl AdsService {
    pub(super) fn new(server: XdsServer, auth: Option<Authenticate>) -> AdsService {
        AdsService { server, auth, shutdown: None }
    }

    /// Ends every stream this service has opened, and any it opens, once `shutdown` is set.
    pub(super) fn shutting_down_with(self, shutdown: watch::Receiver<bool>) -> AdsService {
        AdsService { shutdown: Some(shutdown), ..self }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl<B> Service<http::Request<B>> for AdsService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match request.uri().path() {
            DELTA => {
                let server = self.server.clone();
                let auth = self.auth.clone();
                let shutdown = self.shutdown.clone();
                Box::pin(async move {
                    let (parts, body) = request.into_parts();
                    if let Some(auth) = auth
                        && let Err(status) = auth(&MetadataMap::from_headers(parts.headers.clone())).await
                    {
                        let peer = Request::from_parts(MetadataMap::new(), parts.extensions, ()).remote_addr();
                        tracing::warn!(?peer, code = ?status.code(), reason = status.message(), "xDS stream refused");
                        server.count_refused();
                        return Ok(status.into_http());
                    }
                    let requests = Requests::new(body);
                    // The peer address travels in the connection's extensions, where tonic's
                    // `Request` knows how to find it (plain TCP or TLS).
                    let peer = Request::from_parts(MetadataMap::new(), parts.extensions, ()).remote_addr();
                    let body = PushBody { pushes: server.open_stream(peer, requests, shutdown), done: false };
                    let mut response = http::Response::new(tonic::body::Body::new(body));
                    response
                        .headers_mut()
                        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
                    Ok(response)
                })
            }
            STATE_OF_THE_WORLD => Box::pin(async {
                Ok(Status::unimplemented("state-of-the-world ADS is not served; use DeltaAggregatedResources")
                    .into_http())
            }),
            other => {
                let status = Status::unimplemented(format!("no method {other}"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// The response body of one `DeltaAggregatedResources` call: each push as one gRPC message
/// (uncompressed), then the stream's status as trailers.
struct PushBody {
    pushes: ReceiverStream<Result<Push, Status>>,
    done: bool,
}

impl http_body::Body for PushBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let status = match ready!(Pin::new(&mut self.pushes).poll_next(cx)) {
            Some(Ok(push)) => match crate::grpc::frame(&push) {
                Some(message) => return Poll::Ready(Some(Ok(Frame::data(message)))),
                None => Status::resource_exhausted("xDS push larger than a gRPC message can be"),
            },
            Some(Err(status)) => status,
            None => Status::ok(""),
        };
        self.done = true;
        let mut trailers = http::HeaderMap::new();
        if let Err(unencodable) = status.add_header(&mut trailers) {
            // Only a message that cannot be a header value gets here; the code still can.
            trailers.clear();
            let _ = Status::new(status.code(), "").add_header(&mut trailers);
            tracing::debug!(error = %unencodable, "xDS stream status message dropped from trailers");
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use http_body::Body;
    use prost::Message;
    use proto::envoy::service::discovery::v3::DeltaDiscoveryResponse;
    use tokio::sync::mpsc;

    use super::*;

    async fn next(body: &mut PushBody) -> Option<Frame<Bytes>> {
        poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await.map(|f| f.unwrap())
    }

    fn body() -> (mpsc::Sender<Result<Push, Status>>, PushBody) {
        let (tx, rx) = mpsc::channel(4);
        (tx, PushBody { pushes: ReceiverStream::new(rx), done: false })
    }

    #[tokio::test]
    async fn pushes_are_grpc_messages_and_the_end_is_an_ok_status() {
        let (tx, mut body) = body();
        let push = Push { type_url: "t".into(), nonce: "1".into(), ..Default::default() };
        tx.send(Ok(push.clone())).await.unwrap();
        drop(tx);
        let data = next(&mut body).await.unwrap().into_data().unwrap();
        assert_eq!(data[0], 0, "not compressed");
        let len = u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, data.len() - 5);
        let decoded = DeltaDiscoveryResponse::decode(&data[5..]).unwrap();
        assert_eq!((decoded.type_url.as_str(), decoded.nonce.as_str()), ("t", "1"));
        let trailers = next(&mut body).await.unwrap().into_trailers().unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        assert!(body.is_end_stream());
        assert!(next(&mut body).await.is_none());
    }

    #[tokio::test]
    async fn an_error_ends_the_stream_with_its_status() {
        let (tx, mut body) = body();
        tx.send(Err(Status::invalid_argument("no type_url"))).await.unwrap();
        tx.send(Ok(Push::default())).await.unwrap();
        let trailers = next(&mut body).await.unwrap().into_trailers().unwrap();
        assert_eq!(trailers["grpc-status"], (tonic::Code::InvalidArgument as i32).to_string().as_str());
        assert_eq!(trailers["grpc-message"], "no%20type_url");
        assert!(next(&mut body).await.is_none(), "nothing after the status");
    }
}
