//! A tiny HTTP/2 cleartext (prior knowledge) server living in a pod, for the waypoint's
//! HTTP/2 and gRPC paths: it answers every request with who it is and the path it got; a
//! request with `content-type: application/grpc` gets a gRPC-shaped, streaming answer (each
//! request body chunk echoed back as it arrives, then one length-prefixed message holding the
//! label and path, then `grpc-status: 0` in trailers).
//!
//! The listening socket is bound inside the pod's namespace; serving runs on a
//! single-threaded runtime on its own thread. Stopping ends the runtime (dropping every
//! connection) and joins the thread.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::{self, JoinHandle};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::oneshot;

use crate::Error;
use crate::netns::Netns;
use crate::process::Stop;

/// A running h2c server; stopped when dropped or when its topology is torn down.
pub struct H2cServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
}

struct Inner {
    requests: Arc<AtomicU64>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl H2cServer {
    /// Starts a server on `port` (all addresses) inside `netns`, answering as `label`.
    pub fn start(netns: &Netns, port: u16, label: &str) -> Result<H2cServer, Error> {
        let listener = netns.tcp_listener(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)))?;
        let socket_err =
            |action: &str, source| Error::Socket { action: action.into(), netns: netns.name().into(), source };
        let addr = listener.local_addr().map_err(|e| socket_err("read listener address", e))?;
        listener.set_nonblocking(true).map_err(|e| socket_err("make listener non-blocking", e))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Spawn { command: format!("h2c runtime for {label}"), source })?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let requests = Arc::new(AtomicU64::new(0));
        let (count, label_owned) = (requests.clone(), label.to_owned());
        let thread = thread::Builder::new()
            .name(format!("h2c-{label}"))
            .spawn(move || runtime.block_on(accept_loop(listener, label_owned, count, stop_rx)))
            .map_err(|source| Error::Spawn { command: format!("h2c server thread for {label}"), source })?;
        let inner = Arc::new(Inner { requests, stop: Mutex::new(Some(stop_tx)), thread: Mutex::new(Some(thread)) });
        let as_stop: Weak<dyn Stop> = Arc::<Inner>::downgrade(&inner);
        netns.context().reaper.track(as_stop);
        Ok(H2cServer { inner, addr })
    }

    /// Port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }
}

impl Drop for H2cServer {
    fn drop(&mut self) {
        self.inner.stop_now();
    }
}

impl Stop for Inner {
    fn stop_now(&self) {
        if let Some(tx) = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    label: String,
    requests: Arc<AtomicU64>,
    mut stop: oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
    let label: Arc<str> = label.into();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                tokio::spawn(serve_conn(tcp, label.clone(), requests.clone()));
            }
        }
    }
}

async fn serve_conn(tcp: tokio::net::TcpStream, label: Arc<str>, requests: Arc<AtomicU64>) {
    let Ok(mut conn) = h2::server::handshake(tcp).await else { return };
    while let Some(Ok((req, respond))) = conn.accept().await {
        tokio::spawn(answer(req, respond, label.clone(), requests.clone()));
    }
}

async fn answer(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    label: Arc<str>,
    requests: Arc<AtomicU64>,
) {
    let grpc =
        req.headers().get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let path = req.uri().path().to_owned();
    let mut body = req.into_body();
    if grpc {
        answer_grpc(&mut body, respond, &label, &path, &requests).await;
        return;
    }
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    requests.fetch_add(1, Ordering::Relaxed);
    let Ok(head) = http::Response::builder()
        .status(200)
        .header(http::header::CONTENT_TYPE, "text/plain")
        .header("x-served-by", label.as_ref())
        .body(())
    else {
        return;
    };
    let Ok(mut send) = respond.send_response(head, false) else { return };
    let _ = send.send_data(Bytes::from(format!("hello from {label} (h2)\npath {path}\n")), true);
}

/// A gRPC-shaped answer that streams: the response head goes out at once, every request body
/// chunk is echoed back as it arrives (so length-prefixed messages come back as the same
/// messages, before the client has finished sending), then one message holding the label and
/// path, then `grpc-status: 0` in trailers.
async fn answer_grpc(
    body: &mut h2::RecvStream,
    mut respond: h2::server::SendResponse<Bytes>,
    label: &str,
    path: &str,
    requests: &AtomicU64,
) {
    let Ok(head) = http::Response::builder()
        .status(200)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("x-served-by", label)
        .body(())
    else {
        return;
    };
    let Ok(mut send) = respond.send_response(head, false) else { return };
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        if send.send_data(chunk, false).is_err() {
            return;
        }
    }
    requests.fetch_add(1, Ordering::Relaxed);
    // One uncompressed message: flag 0, 4-byte big-endian length, payload.
    let payload = format!("{label} {path}");
    let mut frame = BytesMut::with_capacity(5 + payload.len());
    frame.put_u8(0);
    frame.put_u32(payload.len() as u32);
    frame.put_slice(payload.as_bytes());
    let _ = send.send_data(frame.freeze(), false);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let _ = send.send_trailers(trailers);
}
