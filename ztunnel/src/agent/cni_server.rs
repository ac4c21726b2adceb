//! The agent's socket for the CNI plugin: one JSON line in, one JSON line
//! out per connection (see [`crate::cni::event`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::Agent;
use crate::cni::event::MAX_LINE;
use crate::cni::{CniEvent, CniReply};

/// How long a plugin has to send its event.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the socket (replacing a stale one), owner-only.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves plugin connections forever.
pub async fn serve(listener: UnixListener, agent: Arc<Agent>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let agent = agent.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, &agent).await {
                        tracing::warn!(error = %e, "CNI plugin connection");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting CNI plugin connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(stream: UnixStream, agent: &Agent) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read).take(MAX_LINE as u64 + 1);
    tokio::time::timeout(READ_TIMEOUT, reader.read_until(b'\n', &mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "plugin sent no event"))??;
    let reply = if line.last() != Some(&b'\n') {
        CniReply::refused(format!("event longer than {MAX_LINE} bytes or unterminated"))
    } else {
        match serde_json::from_slice::<CniEvent>(&line) {
            Ok(event) => {
                tracing::debug!(?event, "CNI event");
                agent.handle(event).await
            }
            Err(e) => CniReply::refused(format!("malformed CNI event: {e}")),
        }
    };
    let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}
