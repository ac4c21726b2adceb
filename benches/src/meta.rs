//! Where and when a run happened: commit, date, machine.

use std::process::Command;

use serde_json::{Value, json};

fn run(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).current_dir(crate::prep::workspace_root()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `commit`, `date` (UTC, RFC 3339) and `machine` (CPU model, CPUs, memory, kernel).
pub fn collect() -> Value {
    let mut commit = run("git", &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    if run("git", &["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty()) {
        commit.push_str("-dirty");
    }
    let date = run("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]).unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let kernel = run("uname", &["-r"]).unwrap_or_default();
    json!({
        "commit": commit,
        "date": date,
        "machine": {
            "cpu": model,
            "cpus": cpus,
            "memory_gib": (mem_kb as f64 / 1048576.0 * 10.0).round() / 10.0,
            "kernel": kernel,
        },
    })
}
