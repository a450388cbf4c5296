//! `xtask bench http-rate`: HTTP/1.1 GETs at a fixed rate over keep-alive connections, and
//! the latency of each. h2load's `--rps` wakes on a coarse timer and sends what fell due
//! since in a burst (at 1000 req/s on one connection, one gap in ten between requests was
//! over 2.5 ms), and it reports no percentiles; this client spreads the requests evenly.
//!
//! Connection `i` of `n` sends at `start + i/rate + k·n/rate`, so the requests of all
//! connections together are `1/rate` apart. A request's latency runs from its write to the
//! last byte of its response. One that could not leave on time (its connection still
//! waiting for the previous answer) leaves at once and is counted as late. Std only, like
//! the rest of the load tool.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// One connection's results.
#[derive(Default)]
struct Conn {
    /// Latencies after the warm-up, in ns.
    samples: Vec<u64>,
    /// Requests answered, warm-up included.
    total: u64,
    errors: u64,
    late: u64,
}

pub fn run(target: SocketAddr, rate: f64, conns: usize, secs: f64, warmup: f64) -> Result<()> {
    if !(rate > 0.0 && conns > 0 && secs > warmup) {
        bail!("http-rate needs a rate, connections, and --secs beyond --warmup");
    }
    // Every connection is open before the clock starts.
    let streams: Vec<TcpStream> = (0..conns)
        .map(|i| {
            let s = TcpStream::connect_timeout(&target, Duration::from_secs(5))
                .with_context(|| format!("connection {i} to {target}"))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            Ok(s)
        })
        .collect::<Result<_>>()?;
    let start = Instant::now() + Duration::from_millis(50);
    let period = Duration::from_secs_f64(conns as f64 / rate);
    let plan = Plan {
        request: format!("GET / HTTP/1.1\r\nHost: {target}\r\nUser-Agent: sluice-bench\r\n\r\n"),
        period,
        warm_end: start + Duration::from_secs_f64(warmup),
        end: start + Duration::from_secs_f64(secs),
    };
    let results: Vec<Conn> = std::thread::scope(|scope| {
        let handles: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let first = start + Duration::from_secs_f64(i as f64 / rate);
                let plan = &plan;
                scope.spawn(move || plan.drive(s, first))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut samples: Vec<u64> = results.iter().flat_map(|c| &c.samples).copied().collect();
    if samples.is_empty() {
        bail!("no request was answered in {secs} s");
    }
    samples.sort_unstable();
    let sum = |f: fn(&Conn) -> u64| results.iter().map(f).sum::<u64>();
    println!(
        "{}",
        serde_json::json!({
            "count": samples.len(),
            "total": sum(|c| c.total),
            "errors": sum(|c| c.errors),
            "late": sum(|c| c.late),
            "p50_us": percentile(&samples, 0.50) / 1000.0,
            "p99_us": percentile(&samples, 0.99) / 1000.0,
            "p999_us": percentile(&samples, 0.999) / 1000.0,
        })
    );
    Ok(())
}

struct Plan {
    request: String,
    period: Duration,
    warm_end: Instant,
    end: Instant,
}

impl Plan {
    /// Sends on `s` from `first` on, one request a period, until the end; a connection
    /// that fails stops there (its requests count as errors).
    fn drive(&self, s: TcpStream, first: Instant) -> Conn {
        let mut conn = Conn::default();
        let Ok(mut writer) = s.try_clone() else {
            conn.errors += 1;
            return conn;
        };
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        let mut due = first;
        while due < self.end {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let t0 = Instant::now();
            if t0.duration_since(due) > self.period {
                conn.late += 1;
            }
            let answer = writer
                .write_all(self.request.as_bytes())
                .and_then(|()| read_response(&mut reader, &mut line));
            match answer {
                Ok(200) => {
                    conn.total += 1;
                    if due >= self.warm_end {
                        conn.samples.push(t0.elapsed().as_nanos() as u64);
                    }
                }
                Ok(_) => conn.errors += 1,
                Err(_) => {
                    // The connection is unusable: the rest of its requests are lost.
                    let left = self.end.saturating_duration_since(due).as_secs_f64()
                        / self.period.as_secs_f64();
                    conn.errors += 1 + left as u64;
                    return conn;
                }
            }
            due += self.period;
        }
        conn
    }
}

/// Reads one HTTP/1.1 response from `r` (a body by `Content-Length` or chunked, so the
/// connection stays usable) and returns its status; `line` is scratch space.
pub fn read_response<R: BufRead>(r: &mut R, line: &mut String) -> io::Result<u16> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let next_line = |r: &mut R, line: &mut String| -> io::Result<()> {
        line.clear();
        if r.read_line(line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    };
    next_line(r, line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad(format!("no HTTP status in {line:?}")))?;
    let (mut length, mut chunked) = (None, false);
    loop {
        next_line(r, line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            return Err(bad(format!("bad header {header:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<u64>()
                    .map_err(|_| bad(format!("bad length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    if chunked {
        loop {
            next_line(r, line)?;
            let size = line.trim_end().split(';').next().unwrap_or_default();
            let size = u64::from_str_radix(size.trim(), 16)
                .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    next_line(r, line)?;
                    if line.trim_end().is_empty() {
                        return Ok(status);
                    }
                }
            }
            skip(r, size + 2)?;
        }
    }
    match length {
        Some(n) => skip(r, n)?,
        // No length: the body runs to the end of the connection, which keep-alive
        // cannot use.
        None if status >= 200 && status != 204 && status != 304 => {
            return Err(bad("a response without a length".into()));
        }
        None => {}
    }
    Ok(status)
}

fn skip<R: BufRead>(r: &mut R, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut Read::take(&mut *r, n), &mut io::sink())?;
    if copied < n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// The `p` quantile of sorted `samples`: the smallest value at least `p` of them do not
/// exceed (as the round-trip tool computes it).
pub fn percentile(samples: &[u64], p: f64) -> f64 {
    let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[i] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statuses(wire: &str) -> Vec<io::Result<u16>> {
        let mut r = io::Cursor::new(wire.as_bytes().to_vec());
        let mut line = String::new();
        let mut out = Vec::new();
        while (r.position() as usize) < wire.len() {
            let status = read_response(&mut r, &mut line);
            let failed = status.is_err();
            out.push(status);
            if failed {
                break;
            }
        }
        out
    }

    #[test]
    fn reads_keep_alive_responses_back_to_back() {
        let nginx = "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\n\
                     Content-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n";
        let chunked = "HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n\
                       4;ext=1\r\nbusy\r\n0\r\nx-trailer: 1\r\n\r\n";
        let empty = "HTTP/1.1 204 No Content\r\n\r\n";
        let wire = format!("{nginx}{chunked}{empty}{nginx}");
        let got: Vec<u16> = statuses(&wire).into_iter().map(Result::unwrap).collect();
        assert_eq!(got, [200, 503, 204, 200]);
    }

    #[test]
    fn a_cut_or_unframed_response_is_an_error() {
        let cut = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok\n";
        let e = statuses(cut).pop().unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let unframed = "HTTP/1.1 200 OK\r\n\r\nok\n";
        let e = statuses(unframed).pop().unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(statuses("garbage\r\n\r\n").pop().unwrap().is_err());
    }

    #[test]
    fn percentiles_of_sorted_samples() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 0.5), 500.0);
        assert_eq!(percentile(&v, 0.99), 990.0);
        assert_eq!(percentile(&v, 0.999), 999.0);
        assert_eq!(percentile(&[7], 0.99), 7.0);
    }
}
