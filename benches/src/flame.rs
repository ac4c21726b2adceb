//! Flame graphs from `perf script` output: the samples of each process folded into call
//! stacks (root first, `a;b;c count`, the format other flame-graph tools read too), drawn as
//! an SVG where a frame's width is its share of the samples, and the samples split by what
//! their innermost frame belongs to (kernel, TLS, the proxy's own code, the runtime, the
//! allocator), which is the first question a profile has to answer.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::svg::escape;

/// Samples per call stack of one process, keyed by the stack, root first, frames joined by `;`.
pub type Folded = BTreeMap<String, u64>;

/// `perf script` text this module cannot read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlameError {
    /// A sample's first line did not carry `pid/tid` (run `perf script -F comm,pid,tid,ip,sym,dso`).
    #[error("perf script line {line}: no pid/tid in the sample header {text:?}")]
    Header { line: usize, text: String },
    /// A frame line was not `address symbol (object)`.
    #[error("perf script line {line}: not a frame (address symbol (object)): {text:?}")]
    Frame { line: usize, text: String },
}

/// Folds `perf script -F comm,pid,tid,ip,sym,dso` output (recorded with call graphs) into
/// stacks per process id.
pub fn fold(script: &str) -> Result<BTreeMap<u32, Folded>, FlameError> {
    let mut out: BTreeMap<u32, Folded> = BTreeMap::new();
    let mut pid = None;
    // Innermost frame first, as perf prints them.
    let mut frames: Vec<String> = Vec::new();
    let mut finish = |pid: Option<u32>, frames: &mut Vec<String>| {
        if let Some(pid) = pid
            && !frames.is_empty()
        {
            frames.reverse();
            *out.entry(pid).or_default().entry(frames.join(";")).or_default() += 1;
        }
        frames.clear();
    };
    for (i, line) in script.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            finish(pid.take(), &mut frames);
        } else if line.starts_with(char::is_whitespace) {
            if pid.is_none() {
                return Err(FlameError::Frame { line: n, text: line.to_string() });
            }
            if let Some(f) = frame(line).ok_or_else(|| FlameError::Frame { line: n, text: line.to_string() })? {
                frames.push(f);
            }
        } else {
            finish(pid.take(), &mut frames);
            pid = Some(header_pid(line).ok_or_else(|| FlameError::Header { line: n, text: line.to_string() })?);
        }
    }
    finish(pid, &mut frames);
    Ok(out)
}

/// The pid of a sample header `comm pid/tid ...` (the command may contain spaces).
fn header_pid(line: &str) -> Option<u32> {
    line.split_whitespace().find_map(|w| {
        let (pid, tid) = w.trim_end_matches(':').split_once('/')?;
        tid.parse::<u32>().ok()?;
        pid.parse().ok()
    })
}

/// One frame's name from `address symbol (object)`: `None` for perf's end-of-stack marker,
/// kernel frames marked `_[k]`, unknown symbols named by their object. `;` cannot appear.
fn frame(line: &str) -> Option<Option<String>> {
    let line = line.trim();
    let (addr, rest) = line.split_once(char::is_whitespace)?;
    u64::from_str_radix(addr, 16).ok()?;
    let open = rest.rfind(" (").filter(|_| rest.ends_with(')'));
    let (sym, object) = match open {
        Some(i) => (rest[..i].trim(), &rest[i + 2..rest.len() - 1]),
        None => (rest.trim(), ""),
    };
    if sym == "[unknown]" && (object == "[unknown]" || object.is_empty()) {
        return Some(None);
    }
    let name = if sym == "[unknown]" || sym.is_empty() {
        format!("[{}]", object.rsplit('/').next().unwrap_or(object))
    } else if object.contains("kernel.kallsyms") {
        format!("{sym}_[k]")
    } else {
        sym.to_string()
    };
    Some(Some(name.replace(';', ":")))
}

/// What a frame belongs to, for colours and for [`shares`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// The kernel: system calls, TCP, the network path to the next process, scheduling.
    Kernel,
    /// TLS: rustls and the AES-GCM and key exchange code under it.
    Tls,
    /// The proxy's own code (ztunnel, the waypoint, hbone, xds).
    Proxy,
    /// The async runtime (tokio and mio).
    Runtime,
    /// malloc and free.
    Alloc,
    /// Everything else: the standard library, libc's copies, HTTP libraries.
    Other,
}

impl Part {
    /// All parts, in the order they are reported.
    pub const ALL: [Part; 6] = [Part::Kernel, Part::Tls, Part::Proxy, Part::Runtime, Part::Alloc, Part::Other];

    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Part::Kernel => "kernel",
            Part::Tls => "TLS (rustls, aws-lc)",
            Part::Proxy => "proxy code",
            Part::Runtime => "runtime (tokio)",
            Part::Alloc => "allocator",
            Part::Other => "other user space",
        }
    }

    /// Which part the frame `name` (as [`fold`] names it) belongs to.
    pub fn of(name: &str) -> Part {
        // Trait impls read `<T as Trait>::f`: the type decides.
        let path = name.trim_start_matches('<');
        let starts = |prefixes: &[&str]| prefixes.iter().any(|p| path.starts_with(p));
        if name.ends_with("_[k]") {
            Part::Kernel
        } else if starts(&["rustls::", "aws_lc", "_aesni", "aesni_", "gcm_", "ecp_nistz256", "sha256_", "sha512_"]) {
            Part::Tls
        } else if starts(&["hbone::", "ztunnel::", "waypoint::", "xds::"]) {
            Part::Proxy
        } else if starts(&["tokio::", "mio::"]) {
            Part::Runtime
        } else if starts(&["malloc", "free", "cfree", "realloc", "calloc", "_int_", "__libc_malloc", "__libc_free"]) {
            Part::Alloc
        } else {
            Part::Other
        }
    }

    fn colour(self, name: &str) -> String {
        // The hue says the part; a small shift per name keeps neighbours apart.
        let shade = name.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b))) % 30;
        let (r, g, b) = match self {
            Part::Kernel => (225, 120 + shade, 60),
            Part::Tls => (80 + shade, 140, 225),
            Part::Proxy => (70, 185 + shade / 2, 90),
            Part::Runtime => (170 + shade, 110, 210),
            Part::Alloc => (210, 80 + shade, 120),
            Part::Other => (200 + shade / 2, 200, 90),
        };
        format!("rgb({r},{g},{b})")
    }
}

/// The share of all samples whose innermost frame belongs to each part (parts with none
/// left out), largest first.
pub fn shares(stacks: &Folded) -> Vec<(Part, f64)> {
    let total: u64 = stacks.values().sum();
    let mut by = BTreeMap::new();
    for (stack, n) in stacks {
        let leaf = stack.rsplit(';').next().unwrap_or(stack);
        *by.entry(Part::of(leaf)).or_insert(0u64) += n;
    }
    let mut v: Vec<(Part, f64)> =
        by.into_iter().filter(|(_, n)| *n > 0).map(|(p, n)| (p, n as f64 / total.max(1) as f64)).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// Writes `stacks` in the folded format, one `stack count` per line.
pub fn folded_text(stacks: &Folded) -> String {
    let mut s = String::new();
    for (stack, n) in stacks {
        let _ = writeln!(s, "{stack} {n}");
    }
    s
}

#[derive(Default)]
struct Node {
    total: u64,
    children: BTreeMap<String, Node>,
}

impl Node {
    fn depth(&self) -> usize {
        1 + self.children.values().map(Node::depth).max().unwrap_or(0)
    }
}

const WIDTH: f64 = 1200.0;
const ROW: f64 = 16.0;
const TOP: f64 = 60.0;
const PAD: f64 = 10.0;
/// Frames narrower than this are left out (their samples still count in their parents).
const MIN_W: f64 = 0.3;
/// About the width of one character at the labels' size.
const CHAR_W: f64 = 6.6;

/// The flame graph of `stacks`: roots at the bottom, each frame as wide as its share of the
/// samples, callees above their callers; hovering a frame shows its name, samples and share.
pub fn svg(title: &str, subtitle: &str, stacks: &Folded) -> String {
    let mut root = Node::default();
    for (stack, n) in stacks {
        root.total += n;
        let mut at = &mut root;
        for f in stack.split(';') {
            at = at.children.entry(f.to_string()).or_default();
            at.total += n;
        }
    }
    let depth = root.depth();
    let height = TOP + ROW * depth as f64 + PAD + 20.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="monospace" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{PAD}" y="20" font-family="sans-serif" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let _ =
        writeln!(s, r#"<text x="{PAD}" y="38" font-family="sans-serif" font-size="12">{}</text>"#, escape(subtitle));
    let mut legend = PAD;
    for p in Part::ALL {
        let _ = writeln!(
            s,
            r#"<rect x="{legend}" y="46" width="10" height="10" fill="{}"/><text x="{}" y="55" font-family="sans-serif">{}</text>"#,
            p.colour(""),
            legend + 14.0,
            escape(p.name())
        );
        legend += 14.0 + p.name().len() as f64 * 6.5 + 16.0;
    }
    let canvas =
        Canvas { bottom: height - PAD - 20.0, scale: (WIDTH - 2.0 * PAD) / root.total.max(1) as f64, all: root.total };
    canvas.draw(&mut s, "all", &root, PAD, 0);
    let _ = writeln!(s, "</svg>");
    s
}

/// Where frames go: the baseline of the bottom row, pixels per sample, and the samples in all.
struct Canvas {
    bottom: f64,
    scale: f64,
    all: u64,
}

impl Canvas {
    fn draw(&self, s: &mut String, name: &str, node: &Node, x: f64, level: usize) {
        let w = node.total as f64 * self.scale;
        if w < MIN_W {
            return;
        }
        let y = self.bottom - ROW * (level + 1) as f64;
        let share = 100.0 * node.total as f64 / self.all.max(1) as f64;
        let fill = if level == 0 { "rgb(190,190,190)".to_string() } else { Part::of(name).colour(name) };
        let _ = write!(
            s,
            r#"<g><title>{} ({} samples, {share:.2}%)</title><rect x="{x:.2}" y="{y}" width="{w:.2}" height="{}" fill="{fill}" rx="2"/>"#,
            escape(name),
            node.total,
            ROW - 1.0
        );
        let fits = ((w - 6.0) / CHAR_W).floor() as usize;
        if fits >= 3 {
            let label: String = if name.chars().count() <= fits {
                name.to_string()
            } else {
                name.chars().take(fits - 2).chain("..".chars()).collect()
            };
            let _ = write!(s, r#"<text x="{:.2}" y="{}">{}</text>"#, x + 3.0, y + ROW - 4.5, escape(&label));
        }
        let _ = writeln!(s, "</g>");
        let mut cx = x;
        for (child, c) in &node.children {
            self.draw(s, child, c, cx, level + 1);
            cx += c.total as f64 * self.scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "\
ztunnel 12852/12852 
\tffffffff8208463b tcp_stream_memory_free ([kernel.kallsyms])
\tffffffff82062cee tcp_poll ([kernel.kallsyms])
\t          108f36 epoll_wait (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t          49b4e3 tokio::runtime::io::driver::Driver::turn (/work/main/target/release/ztunnel)
\t          26306d ztunnel::main (/work/main/target/release/ztunnel)
\tffffffffffffffff [unknown] ([unknown])

ztunnel 12852/12852 
\t          5a0001 <rustls::conn::ConnectionCommon<T> as rustls::conn::connection::PlaintextSink>::write_vectored (/work/main/target/release/ztunnel)
\t          49b4e3 hbone::http2::conn::pump (/work/main/target/release/ztunnel)
\t          26306d ztunnel::main (/work/main/target/release/ztunnel)

my comm 77/78 
\t          1234 [unknown] (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t          26306d ztunnel::main (/work/main/target/release/ztunnel)

ztunnel 12852/12852 
\t          49b4e3 hbone::http2::conn::pump (/work/main/target/release/ztunnel)
\t          26306d ztunnel::main (/work/main/target/release/ztunnel)
";

    #[test]
    fn samples_fold_into_root_first_stacks_per_process() {
        let folded = fold(SCRIPT).unwrap();
        assert_eq!(folded.keys().copied().collect::<Vec<_>>(), vec![77, 12852]);
        let z = &folded[&12852];
        assert_eq!(
            z.get("ztunnel::main;tokio::runtime::io::driver::Driver::turn;epoll_wait;tcp_poll_[k];tcp_stream_memory_free_[k]"),
            Some(&1),
            "{z:?}"
        );
        assert_eq!(z.get("ztunnel::main;hbone::http2::conn::pump"), Some(&1), "{z:?}");
        assert_eq!(z.values().sum::<u64>(), 3);
        assert_eq!(folded[&77].get("ztunnel::main;[libc.so.6]"), Some(&1), "unknown symbols are named by their object");
    }

    #[test]
    fn malformed_script_is_an_error_naming_the_line() {
        assert_eq!(
            fold("\tffff sym (obj)\n").unwrap_err(),
            FlameError::Frame { line: 1, text: "\tffff sym (obj)".into() },
            "a frame before any header"
        );
        assert!(matches!(fold("no pid here\n").unwrap_err(), FlameError::Header { line: 1, .. }));
        assert!(matches!(fold("z 1/1\n\tnot-hex sym (obj)\n").unwrap_err(), FlameError::Frame { line: 2, .. }));
    }

    #[test]
    fn frames_belong_to_parts_by_their_path() {
        assert_eq!(Part::of("tcp_poll_[k]"), Part::Kernel);
        assert_eq!(
            Part::of("<rustls::conn::ConnectionCommon<T> as rustls::conn::connection::PlaintextSink>::write_vectored"),
            Part::Tls
        );
        assert_eq!(Part::of("aws_lc_0_47_0_EVP_AEAD_CTX_seal"), Part::Tls);
        assert_eq!(Part::of("_aesni_ctr32_ghash_6x"), Part::Tls);
        assert_eq!(Part::of("hbone::http2::conn::pump"), Part::Proxy);
        assert_eq!(Part::of("<ztunnel::proxy::Outbound as core::ops::Drop>::drop"), Part::Proxy);
        assert_eq!(Part::of("tokio::runtime::io::driver::Driver::turn"), Part::Runtime);
        assert_eq!(Part::of("_int_free"), Part::Alloc);
        assert_eq!(Part::of("__memcpy_avx_unaligned_erms"), Part::Other);
    }

    #[test]
    fn shares_count_the_innermost_frame() {
        let folded = fold(SCRIPT).unwrap();
        let z = shares(&folded[&12852]);
        assert_eq!(z.len(), 3, "{z:?}");
        for (part, share) in &z {
            assert!((share - 1.0 / 3.0).abs() < 1e-9, "{part:?} {share}");
        }
        assert_eq!(z.iter().map(|p| p.0).collect::<Vec<_>>(), vec![Part::Kernel, Part::Tls, Part::Proxy]);
    }

    #[test]
    fn the_graph_draws_every_frame_as_wide_as_its_samples() {
        let mut stacks = Folded::new();
        stacks.insert("main;a;b".into(), 3);
        stacks.insert("main;c".into(), 1);
        let svg = svg("t <1>", "sub", &stacks);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;1&gt;"), "the title is escaped");
        let width_of = |name: &str| -> f64 {
            let at = svg.find(&format!("<title>{name} (")).unwrap_or_else(|| panic!("{name} drawn"));
            let rest = &svg[at..];
            let w = &rest[rest.find("width=\"").unwrap() + 7..];
            w[..w.find('"').unwrap()].parse().unwrap()
        };
        let full = WIDTH - 2.0 * PAD;
        assert!((width_of("all") - full).abs() < 0.01);
        assert!((width_of("main") - full).abs() < 0.01);
        assert!((width_of("a") - full * 0.75).abs() < 0.01);
        assert!((width_of("b") - full * 0.75).abs() < 0.01);
        assert!((width_of("c") - full * 0.25).abs() < 0.01);
        assert!(svg.contains("<title>b (3 samples, 75.00%)</title>"));
    }

    #[test]
    fn folded_text_is_one_stack_and_count_per_line() {
        let mut stacks = Folded::new();
        stacks.insert("main;a".into(), 2);
        stacks.insert("main".into(), 1);
        assert_eq!(folded_text(&stacks), "main 1\nmain;a 2\n");
    }
}
