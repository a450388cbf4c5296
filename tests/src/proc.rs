//! Guards for processes a test started: killed by pid and reaped on drop, even on panic.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Lines a child wrote to stdout, collected by a reader thread.
#[derive(Default)]
struct Lines {
    lines: Mutex<(Vec<String>, bool)>,
    changed: Condvar,
}

/// A running child process whose stdout lines are collected.
pub struct Proc {
    label: String,
    child: Child,
    /// Open when spawned with [`Proc::spawn_with_stdin`].
    stdin: Option<ChildStdin>,
    out: Arc<Lines>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr captured.
    pub fn spawn(label: &str, cmd: Command) -> Result<Proc> {
        Proc::spawn_inner(label, cmd, Stdio::null())
    }

    /// [`Proc::spawn`] with a pipe to its stdin, fed by [`Proc::send_line`].
    pub fn spawn_with_stdin(label: &str, cmd: Command) -> Result<Proc> {
        Proc::spawn_inner(label, cmd, Stdio::piped())
    }

    /// Writes `line` and a newline to the child's stdin.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .with_context(|| format!("{} has no stdin pipe", self.label))?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .with_context(|| format!("writing to {}", self.label))
    }

    fn spawn_inner(label: &str, mut cmd: Command, stdin: Stdio) -> Result<Proc> {
        cmd.stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {label}: {cmd:?}"))?;
        let out = Arc::new(Lines::default());
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(stdout) = child.stdout.take() {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    lock(&out.lines).0.push(line);
                    out.changed.notify_all();
                }
                lock(&out.lines).1 = true;
                out.changed.notify_all();
            });
        }
        if let Some(mut err) = child.stderr.take() {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    lock(&stderr).push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        Ok(Proc {
            label: label.to_string(),
            stdin: child.stdin.take(),
            child,
            out,
            stderr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A copy of the stdout lines so far.
    pub fn lines(&self) -> Vec<String> {
        lock(&self.out.lines).0.clone()
    }

    pub fn stderr(&self) -> String {
        lock(&self.stderr).clone()
    }

    /// Waits for the first stdout line matching `pred`; fails early if stdout closes.
    pub fn wait_line(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut guard = lock(&self.out.lines);
        loop {
            if let Some(l) = guard.0.iter().find(|l| pred(l)) {
                return Ok(l.clone());
            }
            let now = Instant::now();
            if guard.1 || now >= deadline {
                let why = if guard.1 { "exited" } else { "timed out" };
                bail!(
                    "{} {why} before the expected line; stdout: {:?}; stderr: {}",
                    self.label,
                    guard.0,
                    self.stderr()
                );
            }
            guard = self
                .out
                .changed
                .wait_timeout(guard, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Waits for the process to exit within `timeout`; kills it if it does not.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                // Let the reader thread drain the pipe before anyone reads the lines.
                let mut guard = lock(&self.out.lines);
                while !guard.1 && Instant::now() < deadline + Duration::from_secs(2) {
                    guard = self
                        .out
                        .changed
                        .wait_timeout(guard, Duration::from_millis(50))
                        .map(|(g, _)| g)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!(
                    "{} did not finish within {timeout:?}; stderr: {}",
                    self.label,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL by pid, then reap. Idempotent.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `sluice-testapp serve` process.
pub struct Server {
    pub proc: Proc,
    pub id: String,
    pub port: u16,
}

/// One accepted connection as the server logged it.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub peer: String,
    pub local: String,
    /// `SO_ORIGINAL_DST` as conntrack had it, when it had an entry.
    pub orig: Option<String>,
}

impl Server {
    /// Every connection the server accepted so far.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.proc
            .lines()
            .iter()
            .filter_map(|l| {
                let rest = l.strip_prefix("CONN ")?;
                let mut peer = None;
                let mut local = None;
                let mut orig = None;
                for kv in rest.split_whitespace() {
                    match kv.split_once('=') {
                        Some(("peer", v)) => peer = Some(v.to_string()),
                        Some(("local", v)) => local = Some(v.to_string()),
                        Some(("orig", v)) => orig = Some(v.to_string()),
                        _ => {}
                    }
                }
                Some(Accepted {
                    peer: peer?,
                    local: local?,
                    orig,
                })
            })
            .collect()
    }
}

/// Locks, ignoring poisoning: a panicking test must still tear down.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
