//! `sluice-httpapp`: the L7 applications the tests run inside pods.
//!
//! Servers print `READY <addr>` once listening and run until killed; clients print exactly
//! one JSON line (the report types in `tests::http_app`) and exit 0 whatever their requests
//! did, since judging them is the test's job. Bad usage exits 2, a server that cannot start
//! exits 1.
//!
//! - `serve --port P --id NAME [--ipv6] [--delay-ms D]`: HTTP/1.1 and h2c on one port
//!   (`serve.rs`), one `REQ <method> <path> key=<x-test-key or ->` line per request.
//! - `grpc-serve --port P --id NAME [--ipv6]`, `grpc-call ADDR --unary N [--fail-code C] |
//!   --stream N [--timeout-ms T]`: the `sluice.test.Echo` service (`grpc.rs`).
//! - `banner --port P --text T [--ipv6]`, `banner-dial ADDR [--timeout-ms T]`: a
//!   server-first protocol (`banner.rs`).
//! - `tls-serve --port P --id NAME [--ipv6]`, `tls-dial ADDR --sni NAME [--bytes N]
//!   [--timeout-ms T]`: a TLS 1.3 echo (`tls.rs`).
//! - `load ADDR [options]`: an HTTP/1.1 or h2c load client (`load.rs`).
//! - `raw ADDR --send TEXT [--trickle-ms MS] [--read-timeout-ms T]`: bytes as given
//!   (`raw.rs`).

// A binary crate's root looks for modules beside it, not in httpapp/.
#[path = "httpapp/args.rs"]
mod args;
#[path = "httpapp/banner.rs"]
mod banner;
#[path = "httpapp/grpc.rs"]
mod grpc;
#[path = "httpapp/load.rs"]
mod load;
#[path = "httpapp/raw.rs"]
mod raw;
#[path = "httpapp/serve.rs"]
mod serve;
#[path = "httpapp/tls.rs"]
mod tls;

use args::Fail;

const USAGE: &str = "usage: sluice-httpapp serve|grpc-serve|grpc-call|banner|banner-dial|\
tls-serve|tls-dial|load|raw ... (see the source's module doc)";

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match argv.split_first() {
        Some((cmd, rest)) => (cmd.as_str(), rest),
        None => fail(Fail::Usage(USAGE.into())),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(Fail::Run(format!("tokio runtime: {e}"))),
    };
    let res = runtime.block_on(async {
        match cmd {
            "serve" => serve::run(rest).await,
            "grpc-serve" => grpc::serve(rest).await,
            "grpc-call" => grpc::call(rest).await,
            "banner" => banner::serve(rest).await,
            "banner-dial" => banner::dial(rest).await,
            "tls-serve" => tls::serve(rest).await,
            "tls-dial" => tls::dial(rest).await,
            "load" => load::run(rest).await,
            "raw" => raw::run(rest).await,
            _ => Err(Fail::Usage(USAGE.into())),
        }
    });
    if let Err(e) = res {
        fail(e);
    }
}

fn fail(e: Fail) -> ! {
    let (code, msg) = match e {
        Fail::Usage(m) => (2, m),
        Fail::Run(m) => (1, m),
    };
    eprintln!("sluice-httpapp: {msg}");
    std::process::exit(code)
}
