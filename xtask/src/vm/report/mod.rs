//! Reading a VM's console into results, and writing them out: a table on the terminal and
//! `docs/kernel-matrix.md`. The feature rows come from what the guest's `bpftool feature probe`
//! printed and from test outcomes, never from claims typed in here.

mod console;
pub mod marker;
mod matrix;
mod programs;
mod run;
mod terminal;

pub use console::parse_console;
pub use matrix::markdown;
pub use programs::prog_types;
pub use run::KernelRun;
pub use terminal::print_summary;
