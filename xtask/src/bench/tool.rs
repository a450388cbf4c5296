//! The load tool the bench runs inside the pods (`xtask bench <tool>`, hidden from --help):
//! servers and clients for the scenarios iperf3 does not cover, written with std only so
//! the same code drives every contender. Clients print one JSON line.

use std::io::{BufRead, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use socket2::{Domain, Protocol, Socket, Type};

/// Offsets from `serve --port`: one listener per kind of exchange.
pub const ECHO: u16 = 0;
pub const ONESHOT: u16 = 1;
pub const HOLD: u16 = 2;

#[derive(Subcommand, Debug)]
pub enum Tool {
    /// Serve on port P (echo until EOF), P+1 (read one message, echo it, close first) and
    /// P+2 (send one byte, then hold the connection until the peer closes).
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        port: u16,
        /// Accepting threads of the one-shot listener.
        #[arg(long, default_value_t = 64)]
        workers: usize,
        /// Message size of the one-shot listener.
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Request/response latency on one connection: write `size` bytes, read them back.
    #[command(hide = true)]
    Rr {
        target: SocketAddr,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long)]
        secs: f64,
    },
    /// New connections per second against a one-shot listener, `threads` at a time.
    #[command(hide = true)]
    Connect {
        target: SocketAddr,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long)]
        threads: usize,
        #[arg(long)]
        secs: f64,
    },
    /// Opens `conns` connections to a hold listener, prints `READY <n>`, keeps them until
    /// stdin closes.
    #[command(hide = true)]
    Idle {
        target: SocketAddr,
        #[arg(long)]
        conns: usize,
    },
    /// `conns` connections at once against an echo listener, `bytes` each way.
    #[command(hide = true)]
    Burst {
        target: SocketAddr,
        #[arg(long)]
        conns: usize,
        #[arg(long)]
        bytes: usize,
        #[arg(long, default_value_t = 25)]
        threads: usize,
    },
    /// HTTP/1.1 GETs at `rate` per second over `conns` keep-alive connections: latency
    /// percentiles (after `warmup` seconds) as JSON; see `fixed_rate`.
    #[command(hide = true)]
    HttpRate {
        target: SocketAddr,
        #[arg(long)]
        rate: f64,
        #[arg(long)]
        conns: usize,
        #[arg(long)]
        secs: f64,
        #[arg(long, default_value_t = 0.5)]
        warmup: f64,
    },
    /// Polls `GET http://<addr><path>` until it answers 200 (or `timeout` passes) and
    /// prints the body.
    #[command(hide = true)]
    HttpGet {
        addr: SocketAddr,
        path: String,
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
    },
}

pub fn run(tool: &Tool) -> Result<()> {
    match tool {
        Tool::Serve {
            port,
            workers,
            size,
        } => serve(*port, *workers, *size),
        Tool::Rr { target, size, secs } => rr(*target, *size, *secs),
        Tool::Connect {
            target,
            size,
            threads,
            secs,
        } => connect(*target, *size, *threads, *secs),
        Tool::Idle { target, conns } => idle(*target, *conns),
        Tool::Burst {
            target,
            conns,
            bytes,
            threads,
        } => burst(*target, *conns, *bytes, *threads),
        Tool::HttpRate {
            target,
            rate,
            conns,
            secs,
            warmup,
        } => super::fixed_rate::run(*target, *rate, *conns, *secs, *warmup),
        Tool::HttpGet {
            addr,
            path,
            timeout,
        } => http_get(*addr, path, *timeout),
    }
}

fn serve(port: u16, workers: usize, size: usize) -> Result<()> {
    let bind = |p: u16| listen(p).with_context(|| format!("listening on port {p}"));
    let echo = bind(port + ECHO)?;
    let oneshot = bind(port + ONESHOT)?;
    let hold = bind(port + HOLD)?;
    // One-shot connections are served by a fixed pool blocking in accept: no thread is
    // spawned per connection, which would cost the server more than the proxies compared.
    for _ in 0..workers {
        let l = oneshot.try_clone()?;
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                loop {
                    if let Ok((s, _)) = l.accept() {
                        let _ = oneshot_conn(s, size);
                    }
                }
            })?;
    }
    // Echo connections may be many at once (the burst), so each gets its own thread.
    std::thread::spawn(move || {
        loop {
            if let Ok((s, _)) = echo.accept() {
                let _ = std::thread::Builder::new()
                    .stack_size(128 << 10)
                    .spawn(move || echo_conn(s));
            }
        }
    });
    let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let sweep = held.clone();
    // Held connections are checked once a second and dropped when the peer has closed or
    // asks to close, so rounds do not pile up sockets in CLOSE_WAIT.
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let mut buf = [0u8; 64];
            let mut all = sweep.lock().unwrap_or_else(|e| e.into_inner());
            // Any byte from the client asks us to close (see `idle`).
            all.retain_mut(|s| match s.read(&mut buf) {
                Ok(_) => false,
                Err(e) => e.kind() == ErrorKind::WouldBlock,
            });
        }
    });
    println!("READY");
    loop {
        let (mut s, _) = hold.accept()?;
        if s.write_all(b"k").is_ok() && s.set_nonblocking(true).is_ok() {
            held.lock().unwrap_or_else(|e| e.into_inner()).push(s);
        }
    }
}

fn echo_conn(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n])?;
    }
}

/// Reads one message, echoes it and closes first, so TIME_WAIT stays on the server side
/// and the client's ephemeral ports do not run out.
fn oneshot_conn(mut s: TcpStream, size: usize) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = vec![0u8; size];
    s.read_exact(&mut buf)?;
    s.write_all(&buf)
}

fn rr(target: SocketAddr, size: usize, secs: f64) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(5))
        .with_context(|| format!("connecting to {target}"))?;
    s.set_nodelay(true)?;
    let msg = vec![7u8; size];
    let mut back = vec![0u8; size];
    let warmup = Instant::now() + Duration::from_millis(500);
    let mut warmup_count = 0;
    while Instant::now() < warmup {
        s.write_all(&msg)?;
        s.read_exact(&mut back)?;
        warmup_count += 1;
    }
    let mut samples: Vec<u64> = Vec::with_capacity(1 << 20);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    loop {
        let t0 = Instant::now();
        if t0 > end {
            break;
        }
        s.write_all(&msg)?;
        s.read_exact(&mut back)?;
        samples.push(t0.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    let pct = |p: f64| {
        let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i] as f64 / 1000.0
    };
    if samples.is_empty() {
        bail!("no round trip completed in {secs} s");
    }
    println!(
        "{}",
        serde_json::json!({
            "count": samples.len(),
            // The proxy's CPU time covers the warm-up too.
            "total": samples.len() + warmup_count,
            "p50_us": pct(0.50),
            "p99_us": pct(0.99),
            "p999_us": pct(0.999),
        })
    );
    Ok(())
}

fn connect(target: SocketAddr, size: usize, threads: usize, secs: f64) -> Result<()> {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| {
            std::thread::spawn(move || {
                let (mut ok, mut errors) = (0u64, 0u64);
                let msg = vec![7u8; size];
                while Instant::now() < end {
                    match one_exchange(target, &msg) {
                        Ok(()) => ok += 1,
                        Err(_) => errors += 1,
                    }
                }
                (ok, errors)
            })
        })
        .collect();
    let (mut ok, mut errors) = (0, 0);
    for h in handles {
        let (o, e) = h
            .join()
            .map_err(|_| anyhow::anyhow!("a connect thread panicked"))?;
        ok += o;
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"conns": ok, "errors": errors, "secs": elapsed, "per_sec": ok as f64 / elapsed})
    );
    Ok(())
}

/// Connect, send, read the echo and then the server's FIN (the server closes first).
fn one_exchange(target: SocketAddr, msg: &[u8]) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(msg)?;
    let mut back = Vec::with_capacity(msg.len());
    s.read_to_end(&mut back)?;
    if back.len() != msg.len() {
        return Err(std::io::Error::other("short echo"));
    }
    Ok(())
}

fn idle(target: SocketAddr, conns: usize) -> Result<()> {
    let mut held = Vec::with_capacity(conns);
    for i in 0..conns {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(5))
            .with_context(|| format!("connection {i} to {target}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut greeting = [0u8; 1];
        s.read_exact(&mut greeting)
            .with_context(|| format!("greeting on connection {i}"))?;
        held.push(s);
    }
    println!("READY {}", held.len());
    std::io::stdout().flush()?;
    // Hold until the bench closes our stdin.
    let mut line = String::new();
    while std::io::stdin().lock().read_line(&mut line)? > 0 {}
    // Ask the server to close first, so the TIME_WAIT of thousands of connections stays on
    // its side and does not use up the ephemeral ports the next scenario dials from.
    for s in &mut held {
        let _ = s.write_all(b"x");
    }
    let mut rest = [0u8; 16];
    for s in &mut held {
        while matches!(s.read(&mut rest), Ok(n) if n > 0) {}
    }
    Ok(())
}

fn burst(target: SocketAddr, conns: usize, bytes: usize, threads: usize) -> Result<()> {
    let per = conns.div_ceil(threads.max(1));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| std::thread::spawn(move || burst_thread(target, per, bytes)))
        .collect();
    let mut ok = 0;
    for h in handles {
        ok += h
            .join()
            .map_err(|_| anyhow::anyhow!("a burst thread panicked"))??;
    }
    println!(
        "{}",
        serde_json::json!({"conns": ok, "secs": start.elapsed().as_secs_f64()})
    );
    Ok(())
}

/// A listener whose accept queue holds a whole burst: std's 128 overflowed while the echo
/// server spawned its threads, and the dropped SYNs outlasted the proxies' 5 s connect
/// timeout.
fn listen(port: u16) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Opens all its connections, sends on each, then reads every echo back and closes.
fn burst_thread(target: SocketAddr, n: usize, bytes: usize) -> Result<usize> {
    let msg = vec![7u8; bytes];
    let mut streams = Vec::with_capacity(n);
    for i in 0..n {
        let s = TcpStream::connect_timeout(&target, Duration::from_secs(10))
            .with_context(|| format!("connect {i} to {target}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        streams.push(s);
    }
    for (i, s) in streams.iter_mut().enumerate() {
        s.write_all(&msg)
            .with_context(|| format!("sending on connection {i}"))?;
    }
    let mut back = vec![0u8; bytes];
    for (i, s) in streams.iter_mut().enumerate() {
        s.read_exact(&mut back)
            .with_context(|| format!("reading the echo on connection {i}"))?;
    }
    Ok(streams.len())
}

fn http_get(addr: SocketAddr, path: &str, timeout: f64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(timeout);
    loop {
        let last = match get_once(addr, path) {
            Ok((200, body)) => {
                print!("{body}");
                return Ok(());
            }
            Ok((status, body)) => format!("status {status}: {}", body.trim()),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("GET http://{addr}{path}: no 200 within {timeout} s (last: {last})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn get_once(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status in {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.to_string()))
}
