//! The waypoint binary: parse config, start the runtimes, run until SIGTERM.

use anyhow::Context;
use clap::Parser;
use waypoint::config::Config;

fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    cfg.validate().context("invalid configuration")?;
    let log = ztunnel::logging::init(cfg.log_format, &cfg.log_level).context("log setup")?;
    tracing::info!(config = %serde_json::to_string(&cfg).unwrap_or_default(), "starting");

    // xDS, CA and admin on their own thread, away from the data path.
    let admin_rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let admin_handle = admin_rt.handle().clone();
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_thread = std::thread::Builder::new().name("admin".into()).spawn(move || {
        admin_rt.block_on(async {
            let _ = admin_stopped.await;
        })
    })?;
    let data_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.worker_threads)
        .thread_name("data")
        .enable_all()
        .build()?;
    let result = data_rt.block_on(async {
        let running = waypoint::app::start(cfg, admin_handle, Some(log)).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping"),
        }
        drop(running);
        anyhow::Ok(())
    });
    let _ = stop_admin.send(());
    let _ = admin_thread.join();
    result
}
