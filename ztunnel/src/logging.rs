//! Logs: text or JSON, level changeable at run time through the admin port. Access logs are
//! ordinary events on the `access` target, so they follow the same format.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Changes the log filter of the running process.
#[derive(Clone)]
pub struct LogHandle(reload::Handle<EnvFilter, Registry>);

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogHandle")
    }
}

/// Why a log level change was refused.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The filter text does not parse.
    #[error("invalid log filter {filter:?}: {source}")]
    Filter {
        /// What was given.
        filter: String,
        /// Parser error.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// The subscriber is gone.
    #[error("log filter could not be swapped: {0}")]
    Reload(#[from] reload::Error),
}

impl LogHandle {
    /// Replaces the filter, e.g. `info`, `debug`, `info,ztunnel::proxy=trace`.
    pub fn set(&self, filter: &str) -> Result<(), LogError> {
        let parsed = EnvFilter::try_new(filter).map_err(|source| LogError::Filter { filter: filter.into(), source })?;
        self.0.reload(parsed)?;
        Ok(())
    }

    /// The current filter as text.
    pub fn current(&self) -> String {
        self.0.with_current(|f| f.to_string()).unwrap_or_default()
    }
}

/// Installs the global subscriber. Call once, from `main`.
pub fn init(format: LogFormat, filter: &str) -> Result<LogHandle, LogError> {
    let parsed = EnvFilter::try_new(filter).map_err(|source| LogError::Filter { filter: filter.into(), source })?;
    let (filter, handle) = reload::Layer::new(parsed);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => {
            // Colour only for people: log files and collectors get plain text.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            registry.with(tracing_subscriber::fmt::layer().with_target(true).with_ansi(ansi)).init()
        }
        LogFormat::Json => registry.with(tracing_subscriber::fmt::layer().json().flatten_event(true)).init(),
    }
    Ok(LogHandle(handle))
}
