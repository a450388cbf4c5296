//! Structured logs (text or JSON) with a level that can be changed at run time.
use std::sync::Mutex;

use clap::ValueEnum;
use tracing_subscriber::{
    EnvFilter, Registry, layer::SubscriberExt as _, reload, util::SubscriberInitExt as _,
};

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid log filter {filter:?}: {message}")]
    Filter { filter: String, message: String },
    #[error("logging is already initialised")]
    AlreadyInitialised,
    #[error("cannot change the log filter: {0}")]
    Reload(String),
}

/// Changes the active log filter (`/logging` on the admin port).
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

impl LogControl {
    pub fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes an `EnvFilter` directive such as `debug` or `info,mesh_agent::proxy=trace`.
    pub fn set(&self, filter: &str) -> Result<(), LogError> {
        let parsed = parse(filter)?;
        self.handle
            .reload(parsed)
            .map_err(|e| LogError::Reload(e.to_string()))?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = filter.to_owned();
        Ok(())
    }
}

fn parse(filter: &str) -> Result<EnvFilter, LogError> {
    EnvFilter::try_new(filter).map_err(|e| LogError::Filter {
        filter: filter.to_owned(),
        message: e.to_string(),
    })
}

/// Installs the global subscriber, writing to stderr.
pub fn init(format: LogFormat, filter: &str) -> Result<LogControl, LogError> {
    let (filter_layer, handle) = reload::Layer::new(parse(filter)?);
    let registry = tracing_subscriber::registry().with(filter_layer);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match format {
        LogFormat::Text => registry.with(fmt).try_init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).try_init(),
    };
    result.map_err(|_| LogError::AlreadyInitialised)?;
    Ok(LogControl {
        handle,
        current: Mutex::new(filter.to_owned()),
    })
}
