//! A tiny HTTP/2 cleartext (prior knowledge) server living in a pod, for the waypoint's
//! HTTP/2 paths: it answers every request with who it is and the path it got. (gRPC has a
//! real service of its own, [`crate::grpc`].)
//!
//! It runs as a `ServerThread`: bound inside the pod's namespace, served on a thread of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::Error;
use crate::netns::Netns;
use crate::server_thread::ServerThread;

/// A running h2c server; stopped when dropped or when its topology is torn down.
pub struct H2cServer {
    thread: ServerThread,
    requests: Arc<AtomicU64>,
}

impl H2cServer {
    /// Starts a server on `port` (all addresses) inside `netns`, answering as `label`.
    pub fn start(netns: &Netns, port: u16, label: &str) -> Result<H2cServer, Error> {
        let requests = Arc::new(AtomicU64::new(0));
        let (count, label_owned) = (requests.clone(), label.to_owned());
        let thread = ServerThread::start(netns, port, &format!("h2c-{label}"), move |listener, stop| {
            accept_loop(listener, label_owned, count, stop)
        })?;
        Ok(H2cServer { thread, requests })
    }

    /// Port it listens on.
    pub fn port(&self) -> u16 {
        self.thread.addr().port()
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    label: String,
    requests: Arc<AtomicU64>,
    mut stop: oneshot::Receiver<()>,
) {
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
    let path = req.uri().path().to_owned();
    let mut body = req.into_body();
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
