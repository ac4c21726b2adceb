//! The istiod-lite binary: parse config, start, serve until SIGTERM.

use anyhow::Context;
use clap::Parser;
use istiod_lite::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cfg.log_level).context("--log-level")?)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let running = istiod_lite::serve::start(&cfg).await.context("starting istiod-lite")?;
    tracing::info!(tls = %running.tls_addr, plaintext = ?running.plaintext_addr, monitoring = %running.monitoring_addr, "ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping");
    Ok(())
}
