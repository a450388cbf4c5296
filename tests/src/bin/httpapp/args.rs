//! Command-line parsing shared by the subcommands, and the little they all do: listen and
//! announce it, print a report, describe an error with its causes.

use serde::Serialize;
use std::net::SocketAddr;
use std::str::FromStr;
use tokio::net::TcpListener;

/// Why a subcommand stopped: bad usage exits 2, a server that cannot run exits 1.
#[derive(Debug)]
pub enum Fail {
    Usage(String),
    Run(String),
}

/// Parsed arguments. Unknown options are refused, so a test's typo fails loudly instead of
/// silently running with a default.
pub struct Args {
    positional: Vec<String>,
    values: Vec<(String, String)>,
    flags: Vec<String>,
}

impl Args {
    /// `with_value`: options followed by a value (they may repeat); `flags`: bare switches.
    pub fn parse(raw: &[String], with_value: &[&str], flags: &[&str]) -> Result<Args, Fail> {
        let mut args = Args {
            positional: Vec::new(),
            values: Vec::new(),
            flags: Vec::new(),
        };
        let mut it = raw.iter();
        while let Some(a) = it.next() {
            if with_value.contains(&a.as_str()) {
                let v = it
                    .next()
                    .ok_or_else(|| Fail::Usage(format!("{a} needs a value")))?;
                args.values.push((a.clone(), v.clone()));
            } else if flags.contains(&a.as_str()) {
                args.flags.push(a.clone());
            } else if a.starts_with("--") {
                return Err(Fail::Usage(format!("unknown option {a}")));
            } else {
                args.positional.push(a.clone());
            }
        }
        Ok(args)
    }

    /// The single positional argument, a socket address (`10.0.0.1:80`, `[fd00::1]:80`).
    pub fn addr(&self) -> Result<SocketAddr, Fail> {
        let [a] = self.positional.as_slice() else {
            return Err(Fail::Usage(format!(
                "expected one address, got {:?}",
                self.positional
            )));
        };
        a.parse()
            .map_err(|_| Fail::Usage(format!("bad address {a}")))
    }

    /// The last value given for `name`.
    pub fn opt(&self, name: &str) -> Option<&str> {
        let mut last = None;
        for (k, v) in &self.values {
            if k == name {
                last = Some(v.as_str());
            }
        }
        last
    }

    /// Every value given for `name`, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.values
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn required(&self, name: &str) -> Result<&str, Fail> {
        self.opt(name)
            .ok_or_else(|| Fail::Usage(format!("{name} is required")))
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    pub fn num<T: FromStr>(&self, name: &str, default: T) -> Result<T, Fail> {
        match self.opt(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| Fail::Usage(format!("bad value for {name}: {v}"))),
        }
    }
}

/// Binds `--port` on every address (`[::]` with `--ipv6`, which also takes IPv4) and prints
/// `READY <addr>`, the line the harness waits for.
pub async fn listen(args: &Args) -> Result<TcpListener, Fail> {
    let port: u16 = args.num("--port", 0)?;
    let bind = if args.flag("--ipv6") {
        format!("[::]:{port}")
    } else {
        format!("0.0.0.0:{port}")
    };
    let listener = TcpListener::bind(&bind)
        .await
        .map_err(|e| Fail::Run(format!("bind {bind}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Fail::Run(format!("local_addr: {e}")))?;
    println!("READY {local}");
    Ok(listener)
}

/// Prints a client's one-line JSON report.
pub fn report<T: Serialize>(report: &T) -> Result<(), Fail> {
    let line = serde_json::to_string(report).map_err(|e| Fail::Run(e.to_string()))?;
    println!("{line}");
    Ok(())
}

/// An error and its sources, `outer: inner: root`: hyper's own messages hide the io error
/// (a reset, a refusal) that the tests want to see.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !out.ends_with(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out
}

/// The next connection; accept errors (a reset in the queue, no file descriptors) are
/// logged and waited out rather than ending the server.
pub async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(conn) => return conn,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}
