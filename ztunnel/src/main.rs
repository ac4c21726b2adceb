//! The ztunnel binary: parse config, start the runtimes, run until SIGTERM, drain.

use anyhow::Context;
use clap::Parser;
use ztunnel::config::Config;

fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    cfg.validate().context("invalid configuration")?;
    let log = ztunnel::logging::init(cfg.log_format, &cfg.log_level, ztunnel::logging::AccessWrites::Immediate)
        .context("log setup")?;
    tracing::info!(config = %serde_json::to_string(&cfg).unwrap_or_default(), "starting");

    // Admin work on its own single thread, so it never competes with the data path.
    let runtimes = ztunnel::runtimes::Runtimes::start(cfg.worker_threads)?;
    if let Some(policy) = cfg.slice_policy() {
        runtimes.adapt_slices(policy);
    }
    let admin = runtimes.admin();
    runtimes.run(async {
        let drain = cfg.drain();
        let running = ztunnel::app::start(cfg, admin, Some(log)).await?;
        ztunnel::runtimes::terminated("draining").await?;
        let cut = running.shutdown(drain).await;
        if cut > 0 {
            tracing::warn!(cut, "connections still open at the drain deadline were closed");
        }
        anyhow::Ok(())
    })
}
