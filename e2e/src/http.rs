//! A tiny HTTP/1.1 server living in a pod: it answers every request with who it is and who
//! asked (the peer address it saw), and records each peer, so tests can check both the path
//! and that the client's address was preserved.
//!
//! The listening socket is bound by a thread that entered the pod's namespace; serving then
//! happens on ordinary threads (a socket stays in the namespace it was created in). Stopping
//! shuts every socket down and joins every thread, so nothing keeps the namespace alive.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::Error;
use crate::netns::Netns;
use crate::process::Stop;

/// How long a connection may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// A running HTTP server; stopped when dropped or when its topology is torn down.
pub struct HttpServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
}

/// How a server answers, beyond the default (`200` at once, a two-line body).
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Wait this long before answering (a slow backend, for timeouts).
    pub delay: Duration,
    /// Answer `503` to this many requests first (a flaky backend, for retries).
    pub fail_first: u64,
    /// Append the request head (request line and headers) to the body, so a test sees what a
    /// proxy forwarded (rewritten paths, added headers).
    pub echo_head: bool,
    /// While set, answer `503` to every request (a backend that starts failing, for outlier
    /// ejection); the test keeps a clone and flips it.
    pub failing: Arc<AtomicBool>,
    /// Answer `503` to every other request (the 1st, 3rd, 5th, ...), for retries.
    pub fail_every_other: bool,
}

struct Inner {
    label: String,
    behaviour: Behaviour,
    stopping: AtomicBool,
    /// Taken (and so closed) on stop, so a stopped server holds nothing in the namespace.
    listener: Mutex<Option<Arc<TcpListener>>>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
    conns: Mutex<Vec<(TcpStream, JoinHandle<()>)>>,
    requests: AtomicU64,
    peers: Mutex<Vec<SocketAddr>>,
}

impl HttpServer {
    /// Starts a server on `port` (all addresses) inside `netns`; it answers
    /// `hello from <label>\npeer <ip:port>\n`. Port 0 picks a free port.
    pub fn start(netns: &Netns, port: u16, label: &str) -> Result<HttpServer, Error> {
        HttpServer::start_with(netns, port, label, Behaviour::default())
    }

    /// As [`start`](Self::start), answering as `behaviour` says.
    pub fn start_with(netns: &Netns, port: u16, label: &str, behaviour: Behaviour) -> Result<HttpServer, Error> {
        let listener = netns.tcp_listener(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)))?;
        let addr = listener.local_addr().map_err(|source| Error::Socket {
            action: "read listener address".into(),
            netns: netns.name().into(),
            source,
        })?;
        let inner = Arc::new(Inner {
            label: label.to_owned(),
            behaviour,
            stopping: AtomicBool::new(false),
            listener: Mutex::new(None),
            acceptor: Mutex::new(None),
            conns: Mutex::new(Vec::new()),
            requests: AtomicU64::new(0),
            peers: Mutex::new(Vec::new()),
        });
        let listener = Arc::new(listener);
        *inner.listener.lock().unwrap_or_else(|e| e.into_inner()) = Some(listener.clone());
        let acceptor_inner = inner.clone();
        let handle = thread::Builder::new()
            .name(format!("http-{label}"))
            .spawn(move || accept_loop(&listener, &acceptor_inner))
            .map_err(|source| Error::Spawn { command: format!("http server thread for {label}"), source })?;
        *inner.acceptor.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        let as_stop: Weak<dyn Stop> = Arc::<Inner>::downgrade(&inner);
        netns.context().reaper.track(as_stop);
        Ok(HttpServer { inner, addr })
    }

    /// The address it listens on (inside its namespace: `0.0.0.0:<port>`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// Peer address of every request answered, in order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.inner.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops accepting, closes open connections and joins all threads.
    pub fn stop(self) {
        self.inner.stop_now();
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.inner.stop_now();
    }
}

impl Stop for Inner {
    fn stop_now(&self) {
        if self.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        let listener = self.listener.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(l) = &listener {
            // Shutting a listening socket down wakes the blocked accept() on Linux.
            let _ = nix::sys::socket::shutdown(l.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        }
        if let Some(h) = self.acceptor.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
        drop(listener);
        let conns: Vec<_> = self.conns.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
        for (stream, handle) in conns {
            let _ = stream.shutdown(Shutdown::Both);
            let _ = handle.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, inner: &Arc<Inner>) {
    loop {
        let accepted = listener.accept();
        if inner.stopping.load(Ordering::Acquire) {
            return;
        }
        let Ok((stream, peer)) = accepted else {
            // Out of descriptors or similar: back off instead of spinning.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let Ok(control) = stream.try_clone() else { continue };
        let conn_inner = inner.clone();
        let handle = thread::spawn(move || serve(stream, peer, &conn_inner));
        let mut conns = inner.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|(_, h)| !h.is_finished());
        conns.push((control, handle));
    }
}

fn serve(mut stream: TcpStream, peer: SocketAddr, inner: &Inner) {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_HEAD {
            let _ = stream.write_all(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            );
            return;
        }
    }
    let b = &inner.behaviour;
    if !b.delay.is_zero() {
        thread::sleep(b.delay);
    }
    let mut body = format!("hello from {}\npeer {peer}\n", inner.label);
    if b.echo_head {
        let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(head.len());
        body.push_str(&String::from_utf8_lossy(&head[..end]).replace("\r\n", "\n"));
        body.push('\n');
    }
    // Counted before answering, so a retried request's first try is already counted.
    let n = inner.requests.fetch_add(1, Ordering::Relaxed);
    let status = if n < b.fail_first || b.failing.load(Ordering::Relaxed) || (b.fail_every_other && n.is_multiple_of(2))
    {
        "503 Service Unavailable"
    } else {
        "200 OK"
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(response.as_bytes()).is_ok() {
        inner.peers.lock().unwrap_or_else(|e| e.into_inner()).push(peer);
    }
    let _ = stream.shutdown(Shutdown::Write);
}
