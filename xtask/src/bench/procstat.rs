//! What the bench reads about a proxy process from `/proc`: CPU time and resident memory.

use std::fs;
use std::process::Command;

use anyhow::{Context, Result};

/// User plus system CPU time of every thread of `pid`, in seconds.
pub fn cpu_seconds(pid: u32, ticks_per_sec: f64) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_cpu_ticks(&stat)
        .map(|ticks| ticks as f64 / ticks_per_sec)
        .with_context(|| format!("no utime/stime in {path}: {stat}"))
}

/// utime and stime are fields 14 and 15; the command name (field 2) may hold spaces and
/// parentheses, so counting starts after its last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size of `pid`, in MiB (`VmRSS`).
pub fn rss_mib(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_rss_kib(&status)
        .map(|kib| kib as f64 / 1024.0)
        .with_context(|| format!("no VmRSS in {path}"))
}

fn parse_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> Result<usize> {
    let dir = format!("/proc/{pid}/fd");
    Ok(fs::read_dir(&dir)
        .with_context(|| format!("reading {dir}"))?
        .count())
}

/// Number of threads of `pid` (to report how many workers a proxy really runs).
pub fn threads(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

/// This process's hard limit on open files (`/proc/self/limits`): without
/// CAP_SYS_RESOURCE (containers) children cannot be given more.
pub fn nofile_hard() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    fields.get(4)?.parse().ok()
}

/// Clock ticks per second for `/proc/<pid>/stat` (`getconf CLK_TCK`, 100 if that fails).
pub fn ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let stat = "42 (a) b)) S 1 42 42 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ticks(stat), Some(287));
    }

    #[test]
    fn parses_vmrss() {
        let status = "Name:\tenvoy\nVmPeak:\t 9000 kB\nVmRSS:\t   65536 kB\nThreads:\t4\n";
        assert_eq!(parse_rss_kib(status), Some(65536));
    }
}
