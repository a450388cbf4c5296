//! `mesh-agent`: Sluice's per-node agent.
mod admin;
mod app;
mod authz;
mod check;
mod cli;
mod config;
mod identity;
mod logging;
mod metrics;
mod otlp;
mod proxy;
mod redirect;
mod state;
mod sys;

use std::process::ExitCode;

use clap::Parser as _;

/// Errors print as their chain of causes; returning them from `main` would add a backtrace
/// wherever `RUST_BACKTRACE` is set and bury the line that says what is wrong.
fn main() -> ExitCode {
    match cli::run(cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
