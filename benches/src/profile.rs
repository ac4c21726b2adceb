//! `--profile`: `perf record` attached to the proxies for the whole measured run, turned into
//! one flame graph per proxy ([`crate::flame`]) beside the JSON report. The proxies only work
//! while the mesh side carries load, so their samples are the mesh's runs; perf's own cost
//! lands on the same machine, so a profiled run's figures are for reading the profile only.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::flame;

/// Samples per second of a thread's CPU time: a few thousand per proxy in a `--quick` run,
/// and the stacks copied for DWARF unwinding (8 KiB each) stay near 100 MB in a full one.
const FREQUENCY: &str = "499";
/// Stack bytes copied per sample for unwinding: release builds keep no frame pointers.
const CALL_GRAPH: &str = "dwarf,8192";

/// A running `perf record`; stopped (and its data removed) when dropped without [`finish`](Self::finish).
pub struct Recording {
    child: Option<Child>,
    data: PathBuf,
    log: PathBuf,
    targets: Vec<(u32, String)>,
}

impl Recording {
    /// Starts recording the processes `targets` (pid and a label for the file names) into
    /// `<stem>.perf.data`.
    pub fn start(stem: &Path, targets: &[(u32, &str)]) -> anyhow::Result<Recording> {
        let data = with_suffix(stem, ".perf.data");
        let log = with_suffix(stem, ".perf.log");
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut tids = Vec::new();
        for (pid, _) in targets {
            tids.extend(lasting_threads(*pid).with_context(|| format!("listing the threads of process {pid}"))?);
        }
        let pids = tids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        let child = Command::new("perf")
            .args(["record", "-F", FREQUENCY, "--call-graph", CALL_GRAPH, "-t", &pids, "-o"])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("starting `perf record` (package linux-perf)")?;
        let mut rec = Recording {
            child: Some(child),
            data,
            log,
            targets: targets.iter().map(|(p, l)| (*p, l.to_string())).collect(),
        };
        // perf prints nothing once attached; one that cannot attach exits at once.
        std::thread::sleep(Duration::from_millis(300));
        if let Some(status) = rec.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            bail!("`perf record -t {pids}` exited at start ({status}): {}", read(&rec.log));
        }
        Ok(rec)
    }

    /// Stops recording and writes `<stem>-flame-<label>.svg` and `.folded` for each target;
    /// returns one line per target saying where its samples went.
    pub fn finish(mut self, stem: &Path, what: &str) -> anyhow::Result<Vec<String>> {
        let mut child = self.child.take().expect("running");
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("`perf record` did not stop within 120 s of SIGINT: {}", read(&self.log));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // Stopped by SIGINT, perf writes its data and may still exit non-zero.
        if !status.success() && !self.data.exists() {
            bail!("`perf record` failed ({status}): {}", read(&self.log));
        }
        let out = Command::new("perf")
            .args(["script", "--no-inline", "-F", "comm,pid,tid,ip,sym,dso", "-i"])
            .arg(&self.data)
            .stdin(Stdio::null())
            .output()
            .context("running `perf script`")?;
        if !out.status.success() {
            bail!("`perf script -i {}` failed: {}", self.data.display(), String::from_utf8_lossy(&out.stderr));
        }
        let folded = flame::fold(&String::from_utf8_lossy(&out.stdout))
            .with_context(|| format!("reading `perf script -i {}`", self.data.display()))?;
        let mut notes = Vec::new();
        for (pid, label) in &self.targets {
            let Some(stacks) = folded.get(pid) else {
                notes.push(format!("profile {label}: no samples"));
                continue;
            };
            let samples: u64 = stacks.values().sum();
            let title = format!("{label}: {what}");
            let subtitle = format!("{samples} samples at {FREQUENCY} Hz (perf record --call-graph {CALL_GRAPH})");
            let svg = with_suffix(stem, &format!("-flame-{label}.svg"));
            std::fs::write(&svg, flame::svg(&title, &subtitle, stacks))
                .with_context(|| format!("writing {}", svg.display()))?;
            let text = with_suffix(stem, &format!("-flame-{label}.folded"));
            std::fs::write(&text, flame::folded_text(stacks)).with_context(|| format!("writing {}", text.display()))?;
            let parts: Vec<String> =
                flame::shares(stacks).iter().map(|(p, s)| format!("{} {:.0}%", p.name(), 100.0 * s)).collect();
            notes.push(format!(
                "profile {label}: {samples} samples, innermost frame in {} ({})",
                parts.join(", "),
                svg.display()
            ));
        }
        let _ = std::fs::remove_file(&self.data);
        let _ = std::fs::remove_file(&self.log);
        Ok(notes)
    }
}

/// Runs `rounds`, recorded when `stem` is given (see [`Recording`]); returns what it returned
/// and the report's notes on the profile (none without `stem`).
pub fn around<T>(
    stem: Option<&Path>,
    targets: &[(u32, &str)],
    what: &str,
    rounds: impl FnOnce() -> T,
) -> anyhow::Result<(T, Vec<String>)> {
    let Some(stem) = stem else { return Ok((rounds(), Vec::new())) };
    let rec = Recording::start(stem, targets)?;
    let out = rounds();
    let mut notes = vec![format!(
        "profiled: perf record ran on {} during the rounds, so this run's figures include its cost",
        targets.iter().map(|(_, l)| *l).collect::<Vec<_>>().join(" and ")
    )];
    notes.extend(rec.finish(stem, what)?);
    for n in &notes {
        eprintln!("{n}");
    }
    Ok((out, notes))
}

impl Drop for Recording {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            let _ = std::fs::remove_file(&self.data);
        }
    }
}

/// The threads of `pid` that live as long as it does: the main thread (the data runtime's
/// when it has one worker), the data workers and the admin thread. Short-lived ones (a
/// namespace's helper thread, tokio's blocking pool) are left out: perf 6.1 recording a thread
/// that exits spins on its file descriptor for the rest of the run, taking a CPU from the
/// load it measures.
fn lasting_threads(pid: u32) -> std::io::Result<Vec<u32>> {
    let mut tids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else { continue };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if tid == pid || matches!(comm.trim(), "data" | "admin") {
            tids.push(tid);
        }
    }
    tids.sort_unstable();
    Ok(tids)
}

/// `stem` with `suffix` appended to its file name (`out/l4` + `.perf.data`).
fn with_suffix(stem: &Path, suffix: &str) -> PathBuf {
    let mut s = stem.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default().trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_process_becomes_a_flame_graph_of_its_own_samples() {
        let dir = std::env::temp_dir().join(format!("benches-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let stem = dir.join("run.1");
        let mut busy = Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap();
        let result = Recording::start(&stem, &[(busy.id(), "busy")]).and_then(|rec| {
            std::thread::sleep(Duration::from_millis(1500));
            rec.finish(&stem, "a busy loop")
        });
        let _ = busy.kill();
        let _ = busy.wait();
        let svg = std::fs::read_to_string(dir.join("run.1-flame-busy.svg"));
        let folded = std::fs::read_to_string(dir.join("run.1-flame-busy.folded"));
        let left = stem.with_extension("1.perf.data").exists();
        let _ = std::fs::remove_dir_all(&dir);
        let notes = result.unwrap();
        let (svg, folded) = (svg.unwrap(), folded.unwrap());
        assert_eq!(notes.len(), 1, "{notes:?}");
        let samples: u64 = notes[0]
            .strip_prefix("profile busy: ")
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{notes:?}"));
        // 1.5 s of a busy CPU at 499 Hz; a loaded machine may give the loop less.
        assert!(samples > 100, "{notes:?}");
        assert_eq!(folded.lines().map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap()).sum::<u64>(), samples);
        assert!(svg.contains("busy: a busy loop") && svg.contains(&format!("<title>all ({samples} samples, 100.00%)")));
        assert!(!left, "the raw recording is removed");
    }

    #[test]
    fn a_process_main_thread_counts_as_lasting() {
        let me = std::process::id();
        assert!(lasting_threads(me).unwrap().contains(&me));
        assert!(lasting_threads(u32::MAX).is_err(), "no such process");
    }

    #[test]
    fn files_are_named_after_the_report() {
        assert_eq!(with_suffix(Path::new("out/l4-quick"), ".perf.data"), PathBuf::from("out/l4-quick.perf.data"));
        assert_eq!(
            with_suffix(Path::new("out/run.2"), "-flame-ztunnel-node1.svg"),
            PathBuf::from("out/run.2-flame-ztunnel-node1.svg"),
            "a dot in the report's name stays"
        );
    }
}
