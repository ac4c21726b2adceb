//! The node agent: enrolls pods reported by the CNI plugin and hands them to
//! ztunnel over ZDS.

use clap::Parser;
use ztunnel::agent::{Agent, AgentConfig};

#[derive(Parser)]
#[command(about = "ztunnel node agent")]
struct Cli {
    #[command(flatten)]
    agent: AgentConfig,
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
    let agent = Agent::start(cli.agent).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    agent.shutdown().await;
    tracing::info!("shutting down; pods keep their redirection and ztunnel keeps serving them");
    Ok(())
}
