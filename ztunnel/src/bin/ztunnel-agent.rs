//! The node agent: enrolls pods reported by the CNI plugin and hands them to
//! ztunnel over ZDS. Stopping it (SIGTERM, SIGINT) is a restart: pods keep their
//! redirection and the node keeps the probe table. `--uninstall` removes the latter.

use clap::Parser;
use ztunnel::agent::{Agent, AgentConfig, uninstall_host};

#[derive(Parser)]
#[command(about = "ztunnel node agent")]
struct Cli {
    #[command(flatten)]
    agent: AgentConfig,
    /// Do not run the agent: remove what it keeps on the node across restarts (the
    /// host probe table, in --host-netns) and exit. For ztunnel leaving the node for
    /// good, after the agent has stopped; a normal stop keeps the table so that
    /// kubelet's probes of enrolled pods keep working while the agent restarts.
    #[arg(long)]
    uninstall: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    if cli.uninstall {
        uninstall_host(&cli.agent).await?;
        tracing::info!("host probe table removed (or was not there)");
        return Ok(());
    }
    let agent = Agent::start(cli.agent).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    agent.shutdown().await;
    tracing::info!("shutting down; pods keep their redirection and the node its probe table, for the next agent");
    Ok(())
}
