//! Getting ready outside the sandbox (which has no network): what the mesh runs on a node
//! and the load generators installed (`iproute2`, `nftables`, the CNI plugins, `iperf3`, `wrk`
//! from apt; `oha` from crates.io, started first because it compiles for a while) and the
//! mesh's programs built in release mode beside this one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

/// Where a program is on `PATH` (or in cargo's bin directory), if anywhere.
pub fn which(program: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(Path::new(&home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(program)).find(|p| p.is_file())
}

/// What the mesh itself runs on a node, as (program, Debian package): namespaces, routes and
/// addresses (`ip`), the redirection rules (`nft`), the CNI chain's plugins (a path: they are
/// not on `PATH`).
pub const MESH_PACKAGES: &[(&str, &str)] =
    &[("ip", "iproute2"), ("nft", "nftables"), ("/usr/lib/cni/bridge", "containernetworking-plugins")];

/// Whether `program` is there: a path as given, a bare name on `PATH`.
fn present(program: &str) -> bool {
    if program.contains('/') { Path::new(program).is_file() } else { which(program).is_some() }
}

/// Installs the Debian packages whose programs are missing.
pub fn apt_tools(programs: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = programs.iter().filter(|(prog, _)| !present(prog)).map(|(_, pkg)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing {missing:?} with apt-get");
    let install = || Command::new("apt-get").args(["install", "-y", "-qq"]).args(&missing).status();
    if !install().is_ok_and(|s| s.success()) {
        // A fresh machine has no package lists yet.
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        let s = install().context("running apt-get")?;
        if !s.success() {
            bail!("apt-get install {missing:?} failed ({s})");
        }
    }
    Ok(())
}

/// An `oha` install running in the background.
pub struct OhaInstall {
    child: Option<Child>,
    log: PathBuf,
}

/// Starts `cargo install oha --locked` unless `oha` is already there.
pub fn start_oha_install(log_dir: &Path) -> anyhow::Result<OhaInstall> {
    let log = log_dir.join("oha-install.log");
    if which("oha").is_some() {
        return Ok(OhaInstall { child: None, log });
    }
    std::fs::create_dir_all(log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    eprintln!("installing oha in the background (cargo install oha --locked; log {})", log.display());
    let child = Command::new("cargo")
        .args(["install", "oha", "--locked"])
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .context("starting cargo install oha")?;
    Ok(OhaInstall { child: Some(child), log })
}

impl OhaInstall {
    /// Waits for the install to finish; the path of `oha`.
    pub fn wait(mut self) -> anyhow::Result<PathBuf> {
        if let Some(mut child) = self.child.take() {
            let status = child.wait().context("waiting for cargo install oha")?;
            if !status.success() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                bail!(
                    "cargo install oha failed ({status}):\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        which("oha").context("oha is installed but not found on PATH or in ~/.cargo/bin")
    }
}

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_owned).unwrap_or_else(|| ".".into())
}

/// Builds the mesh's programs in release mode unless `MESH_BIN_DIR` points at prebuilt ones.
pub fn build_mesh() -> anyhow::Result<()> {
    if std::env::var_os("MESH_BIN_DIR").is_some() {
        return Ok(());
    }
    eprintln!("building the mesh (cargo build --release -p ztunnel -p istiod-lite -p waypoint --bins)");
    let status = Command::new("cargo")
        .current_dir(workspace_root())
        .args(["build", "--release", "-p", "ztunnel", "-p", "istiod-lite", "-p", "waypoint", "--bins"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building the mesh failed ({status})");
    }
    Ok(())
}
