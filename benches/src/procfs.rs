//! What a process costs, from `/proc`: CPU time (`stat` utime + stime), resident memory and
//! its peak (`status` VmRSS, VmHWM), and finding a program's process by its command line.

use std::path::PathBuf;
use std::time::Duration;

/// Why a process could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The file could not be read or written (the process may have exited).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not read as the kernel writes it.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No running process matches.
    #[error("no process whose command line contains {0:?}")]
    NotFound(Vec<String>),
}

fn read(path: PathBuf) -> Result<(String, PathBuf), ProcError> {
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok((s, path)),
        Err(source) => Err(ProcError::Io { path, source }),
    }
}

/// Clock ticks per second of `stat`'s time fields.
fn ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// User plus system CPU time used by `pid` so far.
pub fn cpu_time(pid: u32) -> Result<Duration, ProcError> {
    let (text, path) = read(PathBuf::from(format!("/proc/{pid}/stat")))?;
    let ticks = stat_cpu_ticks(&text).ok_or_else(|| ProcError::Format { path, reason: "no utime/stime".into() })?;
    Ok(Duration::from_secs_f64(ticks as f64 / ticks_per_second()))
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field
/// 2) is in parentheses and may hold spaces and parentheses itself, so counting starts after
/// the last `)`.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 (state) is index 0, so utime (14) is index 11.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident memory of a process, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss: u64,
    /// `VmHWM`: the peak since start or since [`reset_peak`].
    pub peak: u64,
}

/// Current and peak resident memory of `pid`.
/// Bytes as MiB, the unit the reports use for memory.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// Resident memory of `pid` now and at its peak.
pub fn memory(pid: u32) -> Result<Memory, ProcError> {
    let (text, path) = read(PathBuf::from(format!("/proc/{pid}/status")))?;
    status_memory(&text).ok_or_else(|| ProcError::Format { path, reason: "no VmRSS/VmHWM".into() })
}

/// VmRSS and VmHWM of a `/proc/<pid>/status` text.
pub fn status_memory(status: &str) -> Option<Memory> {
    let kb = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        let mut words = line[key.len()..].split_whitespace();
        let n: u64 = words.next()?.parse().ok()?;
        (words.next()? == "kB").then_some(n * 1024)
    };
    Some(Memory { rss: kb("VmRSS:")?, peak: kb("VmHWM:")? })
}

/// Starts a new peak-RSS window: VmHWM drops to the current RSS (`clear_refs` value 5).
pub fn reset_peak(pid: u32) -> Result<(), ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/clear_refs"));
    std::fs::write(&path, "5").map_err(|source| ProcError::Io { path, source })
}

/// The one running process whose command line contains every word of `needles` (as whole
/// arguments, in any order).
pub fn find(needles: &[&str]) -> Result<u32, ProcError> {
    let not_found = || ProcError::NotFound(needles.iter().map(|s| s.to_string()).collect());
    let dir = std::fs::read_dir("/proc").map_err(|source| ProcError::Io { path: "/proc".into(), source })?;
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let matches = needles
            .iter()
            .all(|n| args.iter().any(|a| *a == n.as_bytes() || a.rsplit(|b| *b == b'/').next() == Some(n.as_bytes())));
        if matches {
            return Ok(pid);
        }
    }
    Err(not_found())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_after_a_name_with_spaces_and_parens() {
        let stat = "1234 (my (odd) prog) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 4 0 100 1000 200";
        assert_eq!(stat_cpu_ticks(stat), Some(325));
        assert_eq!(stat_cpu_ticks("1234 (x) S 1 2"), None);
        assert_eq!(stat_cpu_ticks("no parens"), None);
    }

    #[test]
    fn rss_and_peak_from_status() {
        let status = "Name:\tztunnel\nVmPeak:\t  100000 kB\nVmHWM:\t    9000 kB\nVmRSS:\t    8000 kB\n";
        assert_eq!(status_memory(status), Some(Memory { rss: 8000 * 1024, peak: 9000 * 1024 }));
        assert_eq!(status_memory("Name:\tx\nVmRSS:\t 1 kB\n"), None);
        assert_eq!(status_memory("VmHWM:\t 1 MB\nVmRSS:\t 1 kB\n"), None, "unknown unit");
    }

    #[test]
    fn this_process_is_readable() {
        let me = std::process::id();
        let m = memory(me).unwrap();
        assert!(m.rss > 0 && m.peak >= m.rss, "{m:?}");
        cpu_time(me).unwrap();
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_str().unwrap();
        assert_eq!(find(&[name]).unwrap(), me);
        assert!(matches!(find(&[name, "--no-such-argument-anywhere"]), Err(ProcError::NotFound(_))));
    }
}
