//! `banner` and `banner-dial`: a server-first protocol (as SMTP, MySQL or SSH greet their
//! clients). A proxy that waits for the client's first bytes to sniff the protocol would
//! hold the greeting back; `first_byte_ms` shows whether it did and for how long.

use crate::args::{Args, Fail, accept, listen, report};
use std::time::{Duration, Instant};
use tests::http_app::BannerReport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest banner line read.
const MAX_LINE: usize = 4096;

/// `banner --port P --text T [--ipv6]`: writes `T\r\n` on accept, then echoes; prints
/// `CONN peer=<a>` per connection.
pub async fn serve(raw: &[String]) -> Result<(), Fail> {
    let args = Args::parse(raw, &["--port", "--text"], &["--ipv6"])?;
    let greeting = format!("{}\r\n", args.required("--text")?);
    let listener = listen(&args).await?;
    loop {
        let (mut stream, peer) = accept(&listener).await;
        println!("CONN peer={peer}");
        let greeting = greeting.clone();
        tokio::spawn(async move {
            let (mut rd, mut wr) = stream.split();
            let res = async {
                wr.write_all(greeting.as_bytes()).await?;
                tokio::io::copy(&mut rd, &mut wr).await?;
                wr.shutdown().await
            };
            if let Err(e) = res.await {
                eprintln!("connection from {peer}: {e}");
            }
        });
    }
}

/// `banner-dial ADDR [--timeout-ms T]`: connects and reads the first line, timing the
/// first byte from `connect()` returning. T bounds the connect and the read each.
pub async fn dial(raw: &[String]) -> Result<(), Fail> {
    let args = Args::parse(raw, &["--timeout-ms"], &[])?;
    let addr = args.addr()?;
    let timeout = Duration::from_millis(args.num("--timeout-ms", 5000)?);
    let mut out = BannerReport::default();
    let res = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err("connect: timed out".to_string()),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Ok(Ok(stream)) => read_line(stream, timeout, &mut out).await,
    };
    match res {
        Ok(()) => out.ok = true,
        Err(e) => out.error = Some(e),
    }
    report(&out)
}

async fn read_line(
    mut stream: TcpStream,
    timeout: Duration,
    out: &mut BannerReport,
) -> Result<(), String> {
    let connected = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut line = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return Err(format!("no whole line within {timeout:?}")),
            Ok(Err(e)) => return Err(format!("read: {e}")),
            Ok(Ok(0)) => return Err("closed before a whole line".into()),
            Ok(Ok(n)) => n,
        };
        if out.first_byte_ms.is_none() {
            out.first_byte_ms = Some(connected.elapsed().as_micros() as f64 / 1000.0);
        }
        line.extend_from_slice(&buf[..n]);
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            let text = String::from_utf8_lossy(&line[..end]);
            out.banner = Some(text.trim_end_matches('\r').to_string());
            return Ok(());
        }
        if line.len() > MAX_LINE {
            return Err(format!("no line end in the first {MAX_LINE} bytes"));
        }
    }
}
