//! The ztunnel binary: parse config, start the runtimes, run until SIGTERM, drain.

use anyhow::Context;
use clap::Parser;
use ztunnel::config::Config;

fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    cfg.validate().context("invalid configuration")?;
    let log = ztunnel::logging::init(cfg.log_format, &cfg.log_level).context("log setup")?;
    tracing::info!(config = %serde_json::to_string(&cfg).unwrap_or_default(), "starting");

    // Admin work on its own single thread, so it never competes with the data path.
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
        let drain = cfg.drain();
        let running = ztunnel::app::start(cfg, admin_handle, Some(log)).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: draining"),
        }
        let cut = running.shutdown(drain).await;
        if cut > 0 {
            tracing::warn!(cut, "connections still open at the drain deadline were closed");
        }
        anyhow::Ok(())
    });
    let _ = stop_admin.send(());
    let _ = admin_thread.join();
    result
}
