//! `sluice-testapp`: the application the tests run inside pods.
//!
//! `serve --port P [--ipv6] [--bind ADDR] [--id NAME] [--backlog N] [--accept-after-ms M]`
//! (a short accept queue, and a pause of M ms once the first connection waits, to make the
//! queue overflow) prints
//! `READY <addr>` once listening
//! and `CONN peer=<a> local=<b> [orig=<c>]` per accepted connection (`orig`: the
//! `SO_ORIGINAL_DST` conntrack recorded, when it has one), and answers the protocol in
//! `tests::wire`. `dial ADDR [--bytes N] [--recv-bytes M] [--count C] [--concurrency K]
//! [--barrier] [--timeout-ms T] [--mark M]` prints one JSON line (`tests::wire::DialReport`)
//! and exits 0 whatever the connections did: judging them is the test's job.
//! `hold ADDR [--timeout-ms T]` keeps one connection open for a test that changes the mesh
//! under it (`tests::echo::PodEchoClient`): it prints `CONNECTED local=<a> peer=<b>`, then
//! sends each stdin line (and its newline) and prints `ECHO <line>` once the same bytes came
//! back; when the connection fails it prints `CLOSED <result> <error>` (`result` as `dial`
//! classifies it, `eof` when the peer closed) and exits.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};
use tests::wire::{ConnResult, DialReport, Fnv, pattern};

const CHUNK: usize = 64 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("dial") => dial(&args[1..]),
        Some("hold") => hold(&args[1..]),
        _ => Err(
            "usage: sluice-testapp serve --port P | dial ADDR [options] | hold ADDR".to_string(),
        ),
    };
    if let Err(e) = res {
        eprintln!("sluice-testapp: {e}");
        std::process::exit(2);
    }
}

/// `--name value` lookup; flags without a value are found with [`flag`].
fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn flag(args: &[String], name: &str) -> bool {
    args.iter().any(|a| a == name)
}

fn num<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T, String> {
    match opt(args, name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| format!("bad value for {name}: {v}")),
    }
}

fn serve(args: &[String]) -> Result<(), String> {
    let port: u16 = num(args, "--port", 0)?;
    let id = opt(args, "--id").unwrap_or("server").to_string();
    let bind = match opt(args, "--bind") {
        Some(b) => b.to_string(),
        None if flag(args, "--ipv6") => format!("[::]:{port}"),
        None => format!("0.0.0.0:{port}"),
    };
    let listener = TcpListener::bind(&bind).map_err(|e| format!("bind {bind}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    if let Some(backlog) = opt(args, "--backlog") {
        let backlog: libc::c_int = backlog.parse().map_err(|_| "bad --backlog")?;
        // listen() again on a listening socket only changes its backlog.
        // SAFETY: a valid listening socket's fd.
        if unsafe { libc::listen(listener.as_raw_fd(), backlog) } != 0 {
            return Err(format!("listen: {}", io::Error::last_os_error()));
        }
    }
    println!("READY {local}");
    let pause = Duration::from_millis(num(args, "--accept-after-ms", 0)?);
    if !pause.is_zero() {
        let mut first = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut first, 1, -1) } < 0 {
            return Err(format!("poll: {}", io::Error::last_os_error()));
        }
        std::thread::sleep(pause);
    }
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|e| format!("?{e}"));
        let local = stream
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let orig = tests::sock::original_dst(&stream)
            .map(|a| format!(" orig={a}"))
            .unwrap_or_default();
        println!("CONN peer={peer} local={local}{orig}");
        let id = id.clone();
        std::thread::spawn(move || {
            if let Err(e) = answer(&stream, &id, &peer) {
                eprintln!("connection from {peer}: {e}");
            }
        });
    }
    Ok(())
}

/// Serves one connection of the `wire` protocol.
fn answer(stream: &TcpStream, id: &str, peer: &str) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.by_ref().take(256).read_line(&mut line)?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("bad request {line:?}"));
    let mut parts = line.split_whitespace();
    if parts.next() != Some("REQ") {
        return Err(bad());
    }
    let n: u64 = parts.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let m: u64 = parts.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let mut sum = Fnv::default();
    let mut left = n;
    let mut buf = vec![0u8; CHUNK];
    while left > 0 {
        let want = left.min(CHUNK as u64) as usize;
        let got = reader.read(&mut buf[..want])?;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        sum.update(&buf[..got]);
        left -= got as u64;
    }
    let mut w = stream;
    w.write_all(format!("RESP id={id} peer={peer} sum={:016x} n={m}\n", sum.0).as_bytes())?;
    send_pattern(w, m, &mut Fnv::default())?;
    stream.shutdown(Shutdown::Write)?;
    // Drain until the client closes so our close never turns into a reset.
    let _ = io::copy(&mut reader, &mut io::sink());
    Ok(())
}

fn send_pattern(mut w: &TcpStream, n: u64, sum: &mut Fnv) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    while off < n {
        let len = (n - off).min(CHUNK as u64) as usize;
        for (i, b) in buf[..len].iter_mut().enumerate() {
            *b = pattern(off + i as u64);
        }
        w.write_all(&buf[..len])?;
        sum.update(&buf[..len]);
        off += len as u64;
    }
    Ok(off)
}

struct DialSpec {
    target: SocketAddr,
    send: u64,
    recv: u64,
    timeout: Duration,
    mark: Option<u32>,
}

fn dial(args: &[String]) -> Result<(), String> {
    let target_s = args.first().ok_or("dial needs an address")?;
    let target: SocketAddr = target_s
        .parse()
        .map_err(|_| format!("bad address {target_s}"))?;
    let send: u64 = num(args, "--bytes", 1024)?;
    let spec = Arc::new(DialSpec {
        target,
        send,
        recv: num(args, "--recv-bytes", send)?,
        timeout: Duration::from_millis(num(args, "--timeout-ms", 5000)?),
        mark: opt(args, "--mark")
            .map(|m| m.parse().map_err(|_| format!("bad value for --mark: {m}")))
            .transpose()?,
    });
    let count: usize = num(args, "--count", 1)?;
    let barrier = flag(args, "--barrier");
    // With --barrier every connection is open at the same time before any data flows.
    let workers = if barrier {
        count
    } else {
        num::<usize>(args, "--concurrency", 1)?.clamp(1, count.max(1))
    };
    let gate = barrier.then(|| Arc::new(Barrier::new(count)));
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(vec![ConnResult::default(); count]));
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (spec, gate, next, results) =
                (spec.clone(), gate.clone(), next.clone(), results.clone());
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let r = one(&spec, gate.as_deref());
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = r;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "dial worker panicked")?;
    }
    let results = std::mem::take(&mut *results.lock().unwrap_or_else(|e| e.into_inner()));
    let line = serde_json::to_string(&DialReport { results }).map_err(|e| e.to_string())?;
    println!("{line}");
    Ok(())
}

/// One connection: connect, (barrier), exchange, classify.
fn one(spec: &DialSpec, gate: Option<&Barrier>) -> ConnResult {
    let start = Instant::now();
    let mut r = ConnResult {
        target: spec.target.to_string(),
        ..Default::default()
    };
    let conn = match spec.mark {
        None => TcpStream::connect_timeout(&spec.target, spec.timeout),
        Some(mark) => tests::sock::connect_marked(spec.target, mark, spec.timeout),
    };
    if let Ok(s) = &conn {
        r.peer = s.peer_addr().ok().map(|a| a.to_string());
        r.local = s.local_addr().ok().map(|a| a.to_string());
    }
    if let Some(g) = gate {
        g.wait();
    }
    let outcome = conn.and_then(|s| exchange(&s, spec, &mut r));
    match outcome {
        Ok(()) => r.result = "ok".into(),
        Err(e) => {
            r.result = classify(&e).into();
            r.error = Some(e.to_string());
        }
    }
    r.elapsed_ms = start.elapsed().as_millis() as u64;
    r
}

fn exchange(s: &TcpStream, spec: &DialSpec, r: &mut ConnResult) -> io::Result<()> {
    s.set_read_timeout(Some(spec.timeout))?;
    s.set_write_timeout(Some(spec.timeout))?;
    let mut w = s;
    w.write_all(format!("REQ {} {}\n", spec.send, spec.recv).as_bytes())?;
    let mut sent_sum = Fnv::default();
    r.sent = send_pattern(s, spec.send, &mut sent_sum)?;
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    reader.by_ref().take(512).read_line(&mut line)?;
    if !line.ends_with('\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("closed before reply ({line:?})"),
        ));
    }
    for kv in line.split_whitespace().skip(1) {
        match kv.split_once('=') {
            Some(("id", v)) => r.server_id = Some(v.to_string()),
            Some(("peer", v)) => r.server_saw = Some(v.to_string()),
            Some(("sum", v)) => r.sent_ok = v == format!("{:016x}", sent_sum.0),
            _ => {}
        }
    }
    let mut buf = vec![0u8; CHUNK];
    let mut in_pattern = true;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for (i, b) in buf[..n].iter().enumerate() {
            in_pattern &= *b == pattern(r.received + i as u64);
        }
        r.received += n as u64;
    }
    r.recv_ok = in_pattern && r.received == spec.recv;
    Ok(())
}

/// `hold`: one long-lived echo connection driven by stdin (see the module doc).
fn hold(args: &[String]) -> Result<(), String> {
    let target_s = args.first().ok_or("hold needs an address")?;
    let target: SocketAddr = target_s
        .parse()
        .map_err(|_| format!("bad address {target_s}"))?;
    let timeout = Duration::from_millis(num(args, "--timeout-ms", 5000)?);
    let closed = |e: io::Error| println!("CLOSED {} {e}", classify(&e));
    let conn = match TcpStream::connect_timeout(&target, timeout) {
        Ok(c) => c,
        Err(e) => {
            closed(e);
            return Ok(());
        }
    };
    let show = |a: io::Result<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
    println!(
        "CONNECTED local={} peer={}",
        show(conn.local_addr()),
        show(conn.peer_addr())
    );
    conn.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    for line in io::stdin().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let sent = format!("{line}\n");
        let mut back = vec![0u8; sent.len()];
        let echoed = (&conn)
            .write_all(sent.as_bytes())
            .and_then(|()| (&conn).read_exact(&mut back));
        match echoed {
            Ok(()) if back == sent.as_bytes() => println!("ECHO {line}"),
            Ok(()) => {
                println!("CLOSED error echoed {:?}", String::from_utf8_lossy(&back));
                return Ok(());
            }
            Err(e) => {
                closed(e);
                return Ok(());
            }
        }
    }
    Ok(())
}

fn classify(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ECONNRESET) => return "reset",
        Some(libc::ECONNREFUSED) => return "refused",
        Some(libc::EPIPE) => return "broken_pipe",
        Some(libc::ETIMEDOUT) | Some(libc::EAGAIN) => return "timeout",
        _ => {}
    }
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timeout",
        io::ErrorKind::UnexpectedEof => "eof",
        _ => "error",
    }
}
