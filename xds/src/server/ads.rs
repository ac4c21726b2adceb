//! The gRPC service `envoy.service.discovery.v3.AggregatedDiscoveryService`, written out rather
//! than generated: the generated one would make every push a `DeltaDiscoveryResponse` owning
//! its resources, while [`Push`] sends the store's encoded bytes (see [`super::push`]).

use std::convert::Infallible;
use std::task::{Context, Poll};

use proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::{BoxFuture, Service, StdError, http};
use tonic::server::NamedService;
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use super::XdsServer;
use super::push::Push;

const DELTA: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
const STATE_OF_THE_WORLD: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// The ADS service of an [`XdsServer`], to mount on a tonic server (see [`XdsServer::service`]).
#[derive(Debug, Clone)]
pub struct AdsService {
    server: XdsServer,
}

impl AdsService {
    pub(super) fn new(server: XdsServer) -> AdsService {
        AdsService { server }
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
                let delta = Delta(self.server.clone());
                Box::pin(async move {
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::<Push, DeltaDiscoveryRequest>::default());
                    Ok(grpc.streaming(delta, request).await)
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

/// One `DeltaAggregatedResources` call.
struct Delta(XdsServer);

impl Service<Request<Streaming<DeltaDiscoveryRequest>>> for Delta {
    type Response = Response<ReceiverStream<Result<Push, Status>>>;
    type Error = Status;
    type Future = std::future::Ready<Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Streaming<DeltaDiscoveryRequest>>) -> Self::Future {
        let peer = request.remote_addr();
        std::future::ready(Ok(Response::new(self.0.open_stream(peer, request.into_inner()))))
    }
}
