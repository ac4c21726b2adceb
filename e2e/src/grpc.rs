//! A real gRPC service for the waypoint scenarios: the `shop.Echo` service of
//! `proto/shop/echo.proto`, served by tonic inside a pod and called by tonic's client over a
//! socket opened inside another pod's namespace (so the client pod's redirection, ztunnel and
//! any waypoint are on the path). Unary `Say` answers once; bidirectional `Chat` answers each
//! message as it arrives. Every reply names the server and the method that produced it, so a
//! test sees where a route sent each call.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::Error;
use crate::netns::Netns;
use crate::server_thread::ServerThread;

/// The generated messages and stubs of `shop.Echo`.
#[allow(missing_docs, unused_qualifications, clippy::all)]
pub mod pb {
    tonic::include_proto!("shop");
}

use pb::echo_client::EchoClient;
use pb::echo_server::{Echo, EchoServer};
use pb::{EchoReply, EchoRequest};

/// The full method names, as on the wire and in GRPCRoute matches.
pub const SAY: &str = "/shop.Echo/Say";
/// See [`SAY`].
pub const CHAT: &str = "/shop.Echo/Chat";

/// A running `shop.Echo` server; stopped when dropped or when its topology is torn down.
pub struct GrpcServer {
    thread: ServerThread,
    calls: Arc<AtomicU64>,
}

impl GrpcServer {
    /// Starts the service on `port` (all addresses) inside `netns`, answering as `label`.
    pub fn start(netns: &Netns, port: u16, label: &str) -> Result<GrpcServer, Error> {
        let calls = Arc::new(AtomicU64::new(0));
        let service = EchoService { label: label.into(), calls: calls.clone() };
        let thread = ServerThread::start(netns, port, &format!("grpc-{label}"), move |listener, stop| async move {
            let served = tonic::transport::Server::builder()
                .add_service(EchoServer::new(service))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stop.await;
                });
            if let Err(e) = served.await {
                eprintln!("gRPC server: {e}");
            }
        })?;
        Ok(GrpcServer { thread, calls })
    }

    /// Port it listens on.
    pub fn port(&self) -> u16 {
        self.thread.addr().port()
    }

    /// Calls answered so far (a streaming call counts once, when it starts).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

struct EchoService {
    label: Arc<str>,
    calls: Arc<AtomicU64>,
}

impl EchoService {
    fn reply(&self, message: String, method: &str) -> EchoReply {
        EchoReply { message, served_by: self.label.to_string(), method: method.into() }
    }
}

type ReplyStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn say(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(self.reply(request.into_inner().message, SAY)))
    }

    type ChatStream = ReplyStream;

    async fn chat(&self, request: Request<Streaming<EchoRequest>>) -> Result<Response<ReplyStream>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let label = self.label.clone();
        let replies = request.into_inner().map(move |m| {
            m.map(|m| EchoReply { message: m.message, served_by: label.to_string(), method: CHAT.into() })
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The socket could not be opened from the client's namespace.
    #[error("connecting: {0}")]
    Connect(#[source] Error),
    /// The runtime or channel could not be set up.
    #[error("setting up the client: {0}")]
    Setup(String),
    /// The call ended with a gRPC status other than OK.
    #[error("{0}")]
    Status(#[from] Status),
    /// The call did not finish in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A streamed reply did not come before the stream ended.
    #[error("the reply stream ended after {0} of the messages")]
    Ended(usize),
}

/// Unary `Say(message)` from inside `from` to `addr`; the reply as the server sent it.
pub fn say(from: &Netns, addr: SocketAddr, message: &str, timeout: Duration) -> Result<EchoReply, CallError> {
    let message = message.to_owned();
    call(
        from,
        addr,
        timeout,
        move |mut client| async move { Ok(client.say(EchoRequest { message }).await?.into_inner()) },
    )
}

/// Bidirectional `Chat` from inside `from` to `addr`: sends each of `messages` on one stream
/// and waits for its reply before sending the next (a proxy that held requests or replies back
/// would stall the call), then closes its side and expects the server to close too. Returns
/// the replies in order.
pub fn chat(from: &Netns, addr: SocketAddr, messages: &[&str], timeout: Duration) -> Result<Vec<EchoReply>, CallError> {
    let messages: Vec<String> = messages.iter().map(|m| (*m).to_owned()).collect();
    call(from, addr, timeout, move |mut client| async move {
        let (tx, rx) = mpsc::channel(1);
        let mut replies = Vec::with_capacity(messages.len());
        let mut sent = messages.into_iter();
        // The first message goes before the call, so the stream opens with data in it.
        if let Some(first) = sent.next() {
            let _ = tx.send(EchoRequest { message: first }).await;
        }
        let mut inbound = client.chat(ReceiverStream::new(rx)).await?.into_inner();
        loop {
            let reply = inbound.message().await?.ok_or(CallError::Ended(replies.len()))?;
            replies.push(reply);
            match sent.next() {
                Some(message) => {
                    let _ = tx.send(EchoRequest { message }).await;
                }
                None => break,
            }
        }
        drop(tx);
        match inbound.message().await? {
            None => Ok(replies),
            Some(extra) => Err(CallError::Setup(format!("a reply nobody asked for: {extra:?}"))),
        }
    })
}

/// Runs one client call on a fresh runtime, over one connection opened inside `from`.
fn call<T, F, Fut>(from: &Netns, addr: SocketAddr, timeout: Duration, f: F) -> Result<T, CallError>
where
    F: FnOnce(EchoClient<tonic::transport::Channel>) -> Fut,
    Fut: Future<Output = Result<T, CallError>>,
{
    let tcp = from.tcp_connect(addr, timeout).map_err(CallError::Connect)?;
    let setup = |e: &dyn std::fmt::Display| CallError::Setup(e.to_string());
    tcp.set_nonblocking(true).map_err(|e| setup(&e))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| setup(&e))?;
    rt.block_on(async {
        let run = async {
            let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).map_err(|e| setup(&e))?;
            let channel = endpoint
                .connect_with_connector(OneSocket(Arc::new(Mutex::new(Some(tcp)))))
                .await
                .map_err(|e| setup(&e))?;
            f(EchoClient::new(channel)).await
        };
        tokio::time::timeout(timeout, run).await.map_err(|_| CallError::Timeout(timeout))?
    })
}

/// A connector that hands tonic the one socket already opened in the client's namespace (the
/// test process itself is outside every pod, so it cannot dial from there).
#[derive(Clone)]
struct OneSocket(Arc<Mutex<Option<std::net::TcpStream>>>);

impl tower_service::Service<http::Uri> for OneSocket {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = std::future::Ready<std::io::Result<Self::Response>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let taken = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        std::future::ready(match taken {
            Some(tcp) => tokio::net::TcpStream::from_std(tcp).map(TokioIo::new),
            None => Err(std::io::Error::other("the client's one connection is already used (no reconnects)")),
        })
    }
}
