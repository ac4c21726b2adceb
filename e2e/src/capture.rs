//! Packet captures with `tcpdump` on an interface of a namespace: start before traffic, stop
//! after, then count packets, check addresses, or search payload bytes (to prove, for
//! instance, that only TLS crosses the node link).

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Error;
use crate::netns::Netns;
use crate::pcap::{self, Packet};
use crate::process::{Process, run_bounded};

/// How long tcpdump may take to attach to the interface.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// Time given to in-flight packets before tcpdump is stopped.
const SETTLE: Duration = Duration::from_millis(100);

/// A running capture; killed (without results) if dropped, so call [`Capture::stop`].
#[derive(Debug)]
pub struct Capture {
    process: Process,
    path: PathBuf,
}

/// The packets a stopped capture saw.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The pcap file.
    pub path: PathBuf,
    /// pcap link type ([`pcap::LINKTYPE_ETHERNET`] on veths and bridges).
    pub linktype: u32,
    /// Every frame, in order.
    pub packets: Vec<Packet>,
    /// tcpdump's own messages (including its drop counters).
    pub log: String,
}

impl Netns {
    /// Starts `tcpdump -i <iface> <filter>` here, writing a pcap file; returns once tcpdump is
    /// attached, so traffic sent afterwards is seen. `filter` is a pcap filter ("" for all,
    /// "tcp port 8080", ...).
    pub fn capture(&self, iface: &str, filter: &str) -> Result<Capture, Error> {
        let mut path = self.context().log_path(self.name(), OsStr::new("tcpdump"));
        path.set_extension("pcap");
        let file = path.to_string_lossy().into_owned();
        // -Z root: tcpdump would otherwise drop privileges before opening the output file.
        // --immediate-mode and -U: take each packet from the kernel and write it as it
        // arrives; buffered packets would be lost when tcpdump is stopped.
        let mut argv =
            vec!["tcpdump", "-i", iface, "-n", "--immediate-mode", "-U", "-Z", "root", "-s", "0", "-w", &file];
        argv.extend(filter.split_whitespace());
        let process = self.spawn(argv)?;
        process.wait_for_log("listening on", START_TIMEOUT)?;
        Ok(Capture { process, path })
    }
}

impl Capture {
    /// The pcap file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops tcpdump (it flushes on SIGTERM) and reads what it captured.
    pub fn stop(self) -> Result<Captured, Error> {
        let Capture { process, path } = self;
        // Packets sent just before this call may still be on their way through tcpdump's
        // socket; SIGTERM would drop them.
        std::thread::sleep(SETTLE);
        let exited = process.stop();
        let bytes = std::fs::read(&path).map_err(|source| Error::Io { action: "read", path: path.clone(), source })?;
        let (linktype, packets) = pcap::parse(&bytes, &path)?;
        Ok(Captured { path, linktype, packets, log: exited.log })
    }
}

impl Captured {
    /// Number of packets.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// Whether nothing was captured.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Total bytes on the wire.
    pub fn bytes(&self) -> u64 {
        self.packets.iter().map(|p| u64::from(p.orig_len)).sum()
    }

    /// Whether any packet contains `needle` (e.g. a plaintext marker).
    pub fn contains(&self, needle: &[u8]) -> bool {
        self.packets.iter().any(|p| p.contains(needle))
    }

    /// IPv4 packets exchanged between `a` and `b`, either direction.
    pub fn between(&self, a: Ipv4Addr, b: Ipv4Addr) -> impl Iterator<Item = &Packet> {
        self.packets
            .iter()
            .filter(move |p| p.ipv4().is_some_and(|h| (h.src == a && h.dst == b) || (h.src == b && h.dst == a)))
    }

    /// A text dump (`tcpdump -nn -r`), for failure messages.
    pub fn text(&self) -> Result<String, Error> {
        let mut cmd = std::process::Command::new("tcpdump");
        cmd.args(["-nn", "-r"]).arg(&self.path);
        Ok(run_bounded(cmd, None, Duration::from_secs(10))?.ok()?.stdout)
    }
}
