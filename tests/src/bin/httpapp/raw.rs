//! `raw ADDR --send TEXT [--trickle-ms MS] [--read-timeout-ms T]`: bytes no HTTP library
//! would send (malformed requests, oversized headers) or send that slowly (a header
//! trickled one byte at a time), and what came back.
//!
//! TEXT takes `\r`, `\n`, `\t`, `\\` and `\xHH` escapes. The reply is read throughout, so
//! the writing stops as soon as the peer closes; after the last byte is written, reading
//! goes on until the peer closes or T ms pass.

use crate::args::{Args, Fail, report};
use std::time::{Duration, Instant};
use tests::http_app::RawReport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Reply text kept in the report.
const MAX_REPLY: usize = 64 * 1024;

pub async fn run(raw: &[String]) -> Result<(), Fail> {
    let args = Args::parse(raw, &["--send", "--trickle-ms", "--read-timeout-ms"], &[])?;
    let addr = args.addr()?;
    let text = unescape(args.required("--send")?)?;
    let trickle = args
        .opt("--trickle-ms")
        .map(|_| args.num("--trickle-ms", 0).map(Duration::from_millis))
        .transpose()?;
    let read_timeout = Duration::from_millis(args.num("--read-timeout-ms", 5000)?);
    let start = Instant::now();
    let mut out = RawReport::default();
    let stream = match tokio::time::timeout(read_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return report(&failed(out, format!("connect: {e}"), start)),
        Err(_) => return report(&failed(out, "connect: timed out".into(), start)),
    };
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    // The reader tells the writer the peer is gone; the writer tells the reader when the
    // read timeout starts.
    let (closed_tx, mut closed) = watch::channel(false);
    let (written_tx, mut written) = watch::channel(false);
    let write = async {
        let mut error = None;
        // Trickled: a byte at a time; else everything in one write.
        let chunks: Vec<&[u8]> = match trickle {
            Some(_) => text.chunks(1).collect(),
            None => vec![&text[..]],
        };
        for (i, chunk) in chunks.into_iter().enumerate() {
            if *closed.borrow() {
                break;
            }
            if let (Some(pause), true) = (trickle, i > 0) {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = closed.changed() => break,
                }
            }
            if let Err(e) = wr.write_all(chunk).await {
                error = Some(e);
                break;
            }
            out.bytes_sent += chunk.len() as u64;
        }
        let _ = written_tx.send(true);
        error
    };
    let read = async {
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        let mut deadline = None;
        let end = loop {
            if deadline.is_none() && *written.borrow() {
                deadline = Some(tokio::time::Instant::now() + read_timeout);
            }
            let read = tokio::select! {
                r = rd.read(&mut buf) => r,
                _ = written.changed(), if deadline.is_none() => continue,
                _ = sleep_until(deadline), if deadline.is_some() => {
                    break Err(std::io::ErrorKind::TimedOut.into());
                }
            };
            match read {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    let room = MAX_REPLY.saturating_sub(reply.len()).min(n);
                    reply.extend_from_slice(&buf[..room]);
                }
                Err(e) => break Err(e),
            }
        };
        let _ = closed_tx.send(true);
        (reply, end)
    };
    let (write_error, (reply, end)) = tokio::join!(write, read);
    out.reply = String::from_utf8_lossy(&reply).into_owned();
    out.status_line = out
        .reply
        .lines()
        .next()
        .map(|l| l.trim_end_matches('\r').to_string());
    match end {
        Ok(()) => out.closed_by_peer = true,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            out.closed_by_peer = true;
            out.reset = true;
            out.error = Some(e.to_string());
        }
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            out.error = Some(format!(
                "no close within {read_timeout:?} of the last write"
            ));
        }
        Err(e) => out.error = Some(format!("read: {e}")),
    }
    if let (Some(e), None) = (write_error, &out.error) {
        out.error = Some(format!("write: {e}"));
    }
    out.elapsed_ms = start.elapsed().as_millis() as u64;
    report(&out)
}

/// Sleeps until `deadline` (forever without one: that select branch is disabled then).
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn failed(mut out: RawReport, error: String, start: Instant) -> RawReport {
    out.error = Some(error);
    out.elapsed_ms = start.elapsed().as_millis() as u64;
    out
}

/// `\r`, `\n`, `\t`, `\\` and `\xHH` in TEXT; any other backslash is bad usage.
fn unescape(text: &str) -> Result<Vec<u8>, Fail> {
    let bad = || Fail::Usage(format!("bad escape in {text:?}"));
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next().ok_or_else(bad)? {
            b'r' => out.push(b'\r'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'\\' => out.push(b'\\'),
            b'x' => {
                let hex = [bytes.next().ok_or_else(bad)?, bytes.next().ok_or_else(bad)?];
                let hex = std::str::from_utf8(&hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            }
            _ => return Err(bad()),
        }
    }
    Ok(out)
}
