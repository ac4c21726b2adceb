//! Hitless ztunnel upgrade: on each node in turn, a second ztunnel starts beside the first (its
//! pod listeners join the first one's SO_REUSEPORT groups), then the old one gets SIGTERM and
//! drains, all under steady cross-node traffic. No connection attempt may fail, and a
//! connection opened before each roll ends cleanly. Two mechanisms make it so: the draining
//! ztunnel sends HTTP/2 GOAWAY on its inbound HBONE connections (so peers' pooled tunnels
//! move to the new one), and the node agent turns on
//! `tcp_migrate_req` in each pod (so connections queued on a closing listener move to the
//! new one instead of being reset). Without the first this test always fails; without the
//! second it fails often (a reset when a listener closes with a connection queued; the
//! deterministic check is `queued_connections_move_to_the_new_listener_when_the_old_closes`
//! in ztunnel's agent_redirect tests). Needs root and the mesh binaries
//! (`cargo build -p ztunnel --bins`).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use e2e::Pod;
use e2e::mesh::{Mesh, MeshSpec, PodSpec};

type Res = Result<(), Box<dyn std::error::Error>>;

/// Upper bounds of each client's loop, whatever happens to the rolls.
const MAX_ATTEMPTS: usize = 20_000;
/// Concurrent steady clients.
const CLIENTS: usize = 4;
const MAX_TRAFFIC_TIME: Duration = Duration::from_secs(60);
/// Time allowed to each step of one request.
const STEP: Duration = Duration::from_secs(3);
const HTTP_PORT: u16 = 8080;
const ECHO_PORT: u16 = 9000;

fn spec() -> MeshSpec {
    MeshSpec {
        nodes: 2,
        ambient_namespaces: vec!["shop".into(), "tools".into()],
        pods: vec![PodSpec::new(2, "shop", "web-2"), PodSpec::new(1, "tools", "client-1")],
        ..MeshSpec::default()
    }
}

/// What the steady client saw.
#[derive(Debug, Default)]
struct Traffic {
    ok: usize,
    /// When (since the loop began) and why each failed attempt failed.
    failures: Vec<(Duration, String)>,
}

/// One short connection: connect, GET, read the whole answer, check it.
fn one_request(to: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&to, STEP).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(STEP)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(STEP)).map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: web-2\r\nConnection: close\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).map_err(|e| format!("read after {} bytes: {e}", answer.len()))?;
    let text = String::from_utf8_lossy(&answer);
    if text.starts_with("HTTP/1.1 200") && text.contains("hello from shop/web-2") {
        Ok(())
    } else {
        Err(format!("bad answer: {text:?}"))
    }
}

/// Back-to-back requests until `stop` (or the bounds), from the calling thread's namespace.
fn steady(to: SocketAddr, stop: &AtomicBool) -> Traffic {
    let start = Instant::now();
    let mut t = Traffic::default();
    while !stop.load(Ordering::Acquire) && t.ok + t.failures.len() < MAX_ATTEMPTS && start.elapsed() < MAX_TRAFFIC_TIME
    {
        match one_request(to) {
            Ok(()) => t.ok += 1,
            Err(e) => t.failures.push((start.elapsed(), e)),
        }
    }
    t
}

/// Echoes `count` connections, one after the other, until each client closes; returns the
/// bytes echoed on each.
fn echo_each(listener: TcpListener, count: usize) -> std::io::Result<Vec<usize>> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + MAX_TRAFFIC_TIME;
    let mut echoed = Vec::new();
    while echoed.len() < count {
        let mut conn = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => return Err(e),
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(MAX_TRAFFIC_TIME))?;
        let mut buf = [0u8; 256];
        let mut bytes = 0;
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                conn.shutdown(Shutdown::Write)?;
                break;
            }
            conn.write_all(&buf[..n])?;
            bytes += n;
        }
        echoed.push(bytes);
    }
    Ok(echoed)
}

/// One round trip on the long-lived connection.
fn ping(conn: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    conn.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    conn.read_exact(&mut back)?;
    if back == msg {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("echo garbled: {:?}", String::from_utf8_lossy(&back))))
    }
}

/// `log` without terminal colour codes.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Log lines other than successful access records.
fn notable(log: &str) -> String {
    log.lines().filter(|l| !l.contains("connection complete") || l.contains("error")).collect::<Vec<_>>().join("\n")
}

/// What a long-lived connection says, in three round trips, across one roll.
const LONG_MESSAGES: [&[u8]; 3] = [b"before the roll\n", b"both ztunnels up\n", b"during the drain\n"];

/// Rolls node `n`'s ztunnel while a long-lived connection from `client` to `echo_to`, opened
/// before, finishes during the drain. Returns the old ztunnel's log (colourless).
fn roll(mesh: &mut Mesh, n: usize, client: &Pod, echo_to: SocketAddr) -> Result<String, Box<dyn std::error::Error>> {
    let mut long = client.netns.tcp_connect(echo_to, STEP)?;
    long.set_read_timeout(Some(STEP))?;
    ping(&mut long, LONG_MESSAGES[0])?;
    mesh.start_ztunnel_beside(n)?;
    // Both serve the pods now; let traffic run through both for a moment.
    thread::sleep(Duration::from_millis(500));
    ping(&mut long, LONG_MESSAGES[1])?;
    let finisher = thread::spawn(move || -> std::io::Result<()> {
        thread::sleep(Duration::from_millis(300));
        ping(&mut long, LONG_MESSAGES[2])?;
        long.shutdown(Shutdown::Write)?;
        let mut rest = Vec::new();
        long.read_to_end(&mut rest)?;
        if rest.is_empty() { Ok(()) } else { Err(std::io::Error::other("unexpected bytes after close")) }
    });
    let exited = mesh.stop_old_ztunnel(n).ok_or("no old ztunnel")?;
    finisher.join().map_err(|_| "long-lived connection thread panicked")??;
    let log = plain(&exited.log);
    if !exited.status.is_some_and(|s| s.success()) {
        return Err(
            format!("node {n}: old ztunnel did not exit by itself: {:?}\n{}", exited.status, notable(&log)).into()
        );
    }
    eprintln!("node {n}: {}", log.lines().filter(|l| l.contains("drained")).collect::<Vec<_>>().join("\n"));
    if !log.contains("drained left=0") {
        return Err(
            format!("node {n}: the old ztunnel cut connections at its drain deadline:\n{}", notable(&log)).into()
        );
    }
    // Traffic now only through the new ztunnel.
    thread::sleep(Duration::from_millis(500));
    Ok(log)
}

/// Rolls the destination's node (inbound HBONE listener, pooled tunnels from node 1), then
/// the client's node (outbound listener, which takes every new connection of the client).
#[test]
fn rolling_ztunnel_restart_refuses_no_connection() {
    e2e::sandboxed_with(Duration::from_secs(150), || -> Res {
        let mut mesh = Mesh::start(spec())?;
        let web = mesh.pod("shop", "web-2").clone();
        let client = mesh.pod("tools", "client-1").clone();
        let _http = web.netns.http_server(HTTP_PORT, "shop/web-2")?;
        let echo_listener =
            web.netns.tcp_listener(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, ECHO_PORT)))?;
        let rolls = [2, 1];
        let echo = thread::spawn(move || echo_each(echo_listener, rolls.len()));
        let http_to = SocketAddr::V4(SocketAddrV4::new(web.ip, HTTP_PORT));
        let echo_to = SocketAddr::V4(SocketAddrV4::new(web.ip, ECHO_PORT));

        let stop = Arc::new(AtomicBool::new(false));
        // Several clients at once, so that connections are often in flight (queued, half
        // open) at the moment an old listener closes.
        let clients = (0..CLIENTS)
            .map(|i| {
                let stop = stop.clone();
                client.netns.spawn_thread(&format!("steady-traffic-{i}"), move || steady(http_to, &stop))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Steady state first: traffic flows through the old ztunnels.
        let warm = Instant::now();
        while mesh.metrics(2).map(|m| !m.contains("istio_tcp_connections_opened_total")).unwrap_or(true) {
            if warm.elapsed() > Duration::from_secs(10) {
                stop.store(true, Ordering::Release);
                return Err("no traffic through node 2's ztunnel before the roll".into());
            }
            thread::sleep(Duration::from_millis(50));
        }
        thread::sleep(Duration::from_millis(500));

        let mut old_logs = Vec::new();
        let mut rolled = Ok(());
        for n in rolls {
            match roll(&mut mesh, n, &client, echo_to) {
                Ok(log) => old_logs.push((n, log)),
                Err(e) => {
                    rolled = Err(e);
                    break;
                }
            }
        }
        stop.store(true, Ordering::Release);
        let mut traffic = Traffic::default();
        for c in clients {
            let t = c.join().map_err(|_| "traffic thread panicked")??;
            traffic.ok += t.ok;
            traffic.failures.extend(t.failures);
        }
        rolled?;
        let echoed = echo.join().map_err(|_| "echo thread panicked")??;

        if !traffic.failures.is_empty() {
            for (n, log) in &old_logs {
                eprintln!("old ztunnel (node {n}):\n{}", notable(log));
            }
            for n in rolls {
                eprintln!("new ztunnel (node {n}):\n{}", notable(&plain(&mesh.ztunnel_log(n))));
            }
        }
        eprintln!("rolls: {} requests ok, {} failed: {:?}", traffic.ok, traffic.failures.len(), traffic.failures);
        assert!(traffic.ok >= 20, "steady traffic ran during the rolls: {traffic:?}");
        assert!(
            traffic.failures.is_empty(),
            "{} of {} connection attempts failed during the rolls: {:?}",
            traffic.failures.len(),
            traffic.ok + traffic.failures.len(),
            traffic.failures,
        );
        let all: usize = LONG_MESSAGES.iter().map(|m| m.len()).sum();
        assert_eq!(echoed, vec![all; rolls.len()], "every byte of each long-lived connection was echoed");
        // The new ztunnels are the ones serving now.
        for n in rolls {
            let m = mesh.metrics(n)?;
            assert!(m.contains("istio_tcp_connections_opened_total"), "node {n}'s new ztunnel carried traffic:\n{m}");
        }
        Ok(())
    });
}
