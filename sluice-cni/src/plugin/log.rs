//! Logging for one invocation: stderr (the runtime keeps it in its own log) or a file,
//! never stdout, which carries the CNI result.
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use tracing::level_filters::LevelFilter;

use super::config::LogLevel;

/// Starts logging at `level` to `file` (appended) or stderr. Called once per process; a file
/// that cannot be opened falls back to stderr and says so.
pub fn init(level: LogLevel, file: Option<&Path>) {
    let filter = match level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(filter)
        .with_ansi(false)
        .with_target(false);
    let opened = file.map(|path| {
        (
            path,
            OpenOptions::new().create(true).append(true).open(path),
        )
    });
    match opened {
        Some((_, Ok(f))) => {
            let _ = builder.with_writer(Mutex::new(f)).try_init();
        }
        Some((path, Err(e))) => {
            let _ = builder.with_writer(std::io::stderr).try_init();
            tracing::warn!(
                "cannot open logFile {}: {e}; logging to stderr",
                path.display()
            );
        }
        None => {
            let _ = builder.with_writer(std::io::stderr).try_init();
        }
    }
}
