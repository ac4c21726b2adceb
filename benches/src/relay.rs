//! The floor under any ztunnel: a plain TCP relay that does nothing but accept, connect and
//! copy bytes (no TLS, no HTTP/2, no policy, one upstream connection per client connection,
//! `TCP_NODELAY` both ways, 256 KiB buffers), on as many tokio workers as ztunnel and in a
//! runtime of the same kind (`ztunnel::runtimes::data_runtime`). `l4 --floor` runs one in each
//! pod of the baseline path, where ztunnel's sockets would sit, so the report shows what the
//! hops themselves cost on this machine apart from anything the mesh does in them. Run as
//! `benches relay --map LISTEN=TARGET ...`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use e2e::{Pod, Process};

/// The waypoint's runtime workers by default (its `--worker-threads`), so a relay in its place
/// gets as many.
pub const WAYPOINT_WORKERS: usize = 1;

/// As many runtime workers as ztunnel starts with on this machine (its
/// `ZTUNNEL_WORKER_THREADS` when set, which the harness's ztunnels inherit, else its default),
/// so a relay in its place gets as many.
pub fn ztunnel_workers() -> usize {
    std::env::var(ztunnel::config::WORKER_THREADS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(ztunnel::config::default_worker_threads)
}

/// Copy buffer per direction: ztunnel's largest chunk, so bulk transfers are not held back by
/// a smaller buffer than the mesh gets.
const COPY_BUFFER: usize = 256 * 1024;

/// One listening address and where its connections go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Where the relay accepts.
    pub listen: SocketAddr,
    /// Where each accepted connection is relayed to.
    pub target: SocketAddr,
}

impl FromStr for Mapping {
    type Err = String;

    fn from_str(s: &str) -> Result<Mapping, String> {
        let (listen, target) = s
            .split_once('=')
            .ok_or_else(|| format!("--map {s:?}: expected LISTEN=TARGET, e.g. 0.0.0.0:18080=127.0.0.1:8080"))?;
        let addr = |what: &str, v: &str| v.parse::<SocketAddr>().map_err(|e| format!("--map {s:?}: {what} {v:?}: {e}"));
        Ok(Mapping { listen: addr("listen address", listen)?, target: addr("target", target)? })
    }
}

/// Starts this program's `relay` in `pod` with `maps` on `threads` workers and returns once it
/// listens; the relay is killed when the returned process is dropped.
pub fn start_in(pod: &Pod, maps: &[Mapping], threads: usize) -> anyhow::Result<Process> {
    let exe: PathBuf = std::env::current_exe().context("finding this program")?;
    let mut argv = vec![exe.to_string_lossy().into_owned(), "relay".into(), "--threads".into(), threads.to_string()];
    for m in maps {
        argv.extend(["--map".into(), format!("{}={}", m.listen, m.target)]);
    }
    let p = pod.netns.spawn(argv.iter().map(String::as_str))?;
    p.wait_for_log("relaying", Duration::from_secs(5)).with_context(|| format!("relay in pod {}", pod.name))?;
    Ok(p)
}

/// Relays every mapping until killed, on `threads` runtime workers.
pub fn relay(maps: &[Mapping], threads: usize) -> std::io::Result<()> {
    let rt = ztunnel::runtimes::data_runtime(threads.max(1), &Default::default())?;
    rt.block_on(async move {
        let mut listeners = Vec::with_capacity(maps.len());
        for m in maps {
            listeners.push((tokio::net::TcpListener::bind(m.listen).await?, m.target));
        }
        for (l, target) in &listeners {
            eprintln!("relaying {} to {target}", l.local_addr()?);
        }
        let mut accepts = tokio::task::JoinSet::new();
        for (listener, target) in listeners {
            accepts.spawn(accept_loop(listener, target));
        }
        match accepts.join_next().await {
            Some(Ok(r)) => r,
            Some(Err(e)) => Err(std::io::Error::other(e)),
            None => Ok(()),
        }
    })
}

async fn accept_loop(listener: tokio::net::TcpListener, target: SocketAddr) -> std::io::Result<()> {
    loop {
        let (mut client, _) = listener.accept().await?;
        tokio::spawn(async move {
            let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                // The client sees its connection closed, as it would with an unreachable
                // server behind a proxy; the load generator counts the error.
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let _ =
                tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, COPY_BUFFER, COPY_BUFFER).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, TcpListener, TcpStream};
    use std::time::Duration;

    #[test]
    fn a_mapping_reads_listen_then_target_and_names_what_is_wrong() {
        let m: Mapping = "0.0.0.0:18080=127.0.0.1:8080".parse().unwrap();
        assert_eq!(m.listen, "0.0.0.0:18080".parse().unwrap());
        assert_eq!(m.target, "127.0.0.1:8080".parse().unwrap());
        assert!("0.0.0.0:18080".parse::<Mapping>().unwrap_err().contains("LISTEN=TARGET"));
        assert!("0.0.0.0:18080=nowhere".parse::<Mapping>().unwrap_err().contains("target \"nowhere\""));
    }

    #[test]
    fn bytes_go_through_both_ways() {
        let echo = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let target = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = echo.accept().unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            buf.reverse();
            s.write_all(&buf).unwrap();
        });
        // A free port for the relay: bind, note it, release.
        let listen = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap();
        std::thread::spawn(move || relay(&[Mapping { listen, target }], 1));
        let mut conn = (0..100)
            .find_map(|_| {
                TcpStream::connect(listen).ok().or_else(|| {
                    std::thread::sleep(Duration::from_millis(20));
                    None
                })
            })
            .expect("the relay listens");
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.write_all(b"hello").unwrap();
        let mut back = [0u8; 5];
        conn.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"olleh");
    }
}
