//! `grpc-serve` and `grpc-call`: a tiny gRPC service, `sluice.test.Echo`, over plaintext
//! HTTP/2 with tonic.
//!
//! The messages are written by hand with prost's derive and the service glue on tonic's
//! generic `server::Grpc` / `client::Grpc`, which is all `tonic-build` would generate: no
//! `.proto` file, no `protoc`, no build script.
//!
//! ```proto
//! service Echo {
//!   rpc Say(EchoRequest) returns (EchoReply);            // fail_code != 0: that status
//!   rpc Count(CountRequest) returns (stream CountReply);  // i = 1..=n
//! }
//! ```

use crate::args::{Args, Fail, listen, report};
use http::uri::PathAndQuery;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tests::http_app::GrpcReport;
use tonic::body::Body;
use tonic::server::{Grpc, ServerStreamingService, UnaryService};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;

const SAY: &str = "/sluice.test.Echo/Say";
const COUNT: &str = "/sluice.test.Echo/Count";

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(int32, tag = "2")]
    pub fail_code: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(string, tag = "2")]
    pub served_by: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CountRequest {
    #[prost(uint32, tag = "1")]
    pub n: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CountReply {
    #[prost(uint32, tag = "1")]
    pub i: u32,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type CountStream = tokio_stream::Iter<std::vec::IntoIter<Result<CountReply, Status>>>;

/// The service: routes by path to the two methods, as tonic-build's server would.
#[derive(Clone)]
struct Echo {
    id: Arc<str>,
}

impl tower_service::Service<http::Request<Body>> for Echo {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let id = self.id.clone();
        Box::pin(async move {
            // Each method has its own codec: the messages it decodes and encodes.
            Ok(match req.uri().path() {
                SAY => Grpc::new(ProstCodec::default()).unary(Say(id), req).await,
                COUNT => {
                    let mut grpc = Grpc::new(ProstCodec::default());
                    grpc.server_streaming(Count, req).await
                }
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// `Say`, answering as the server `.0`.
struct Say(Arc<str>);

impl UnaryService<EchoRequest> for Say {
    type Response = EchoReply;
    type Future = BoxFuture<Result<Response<EchoReply>, Status>>;

    fn call(&mut self, req: Request<EchoRequest>) -> Self::Future {
        println!("RPC Say");
        let id = self.0.to_string();
        let req = req.into_inner();
        Box::pin(async move {
            if req.fail_code != 0 {
                let msg = format!("{id} fails as asked");
                return Err(Status::new(Code::from_i32(req.fail_code), msg));
            }
            Ok(Response::new(EchoReply {
                message: req.message,
                served_by: id,
            }))
        })
    }
}

/// `Count`.
struct Count;

impl ServerStreamingService<CountRequest> for Count {
    type Response = CountReply;
    type ResponseStream = CountStream;
    type Future = BoxFuture<Result<Response<CountStream>, Status>>;

    fn call(&mut self, req: Request<CountRequest>) -> Self::Future {
        println!("RPC Count");
        let n = req.into_inner().n;
        let items: Vec<_> = (1..=n).map(|i| Ok(CountReply { i })).collect();
        Box::pin(async move { Ok(Response::new(tokio_stream::iter(items))) })
    }
}

/// `grpc-serve --port P --id NAME [--ipv6]`: prints `RPC <method>` per call.
pub async fn serve(raw: &[String]) -> Result<(), Fail> {
    let args = Args::parse(raw, &["--port", "--id"], &["--ipv6"])?;
    let echo = Echo {
        id: args.required("--id")?.into(),
    };
    let listener = listen(&args).await?;
    Server::builder()
        .serve_with_incoming(echo, TcpIncoming::from(listener))
        .await
        .map_err(|e| Fail::Run(format!("grpc server: {e}")))
}

/// `grpc-call ADDR --unary N [--fail-code C] | --stream N [--timeout-ms T]`: N unary calls
/// one after another, or one stream of N items, over one channel.
pub async fn call(raw: &[String]) -> Result<(), Fail> {
    let args = Args::parse(
        raw,
        &["--unary", "--stream", "--fail-code", "--timeout-ms"],
        &[],
    )?;
    let addr = args.addr()?;
    let unary: Option<u32> = args
        .opt("--unary")
        .map(|_| args.num("--unary", 0))
        .transpose()?;
    let stream: Option<u32> = args
        .opt("--stream")
        .map(|_| args.num("--stream", 0))
        .transpose()?;
    let fail_code: i32 = args.num("--fail-code", 0)?;
    let timeout = Duration::from_millis(args.num("--timeout-ms", 5000)?);
    let mut out = GrpcReport::default();
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Fail::Usage(format!("bad address {addr}: {e}")))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let mut client = match endpoint.connect().await {
        Ok(channel) => tonic::client::Grpc::new(channel),
        Err(e) => {
            out.error = Some(format!("connect: {}", crate::args::chain(&e)));
            return report(&out);
        }
    };
    match (unary, stream) {
        (Some(n), None) => {
            for i in 0..n {
                let req = EchoRequest {
                    message: format!("hello {i}"),
                    fail_code,
                };
                let res = say(&mut client, req).await.map(|reply| {
                    out.messages_received += 1;
                    *out.by_served_by.entry(reply.served_by).or_default() += 1;
                });
                record(&mut out, res);
            }
        }
        (None, Some(n)) => {
            let res = count(&mut client, n, &mut out.messages_received).await;
            record(&mut out, res);
        }
        _ => return Err(Fail::Usage("give one of --unary N and --stream N".into())),
    }
    out.ok = out.grpc_statuses.keys().all(|&c| c == 0) && !out.grpc_statuses.is_empty();
    report(&out)
}

/// Counts a call's final status; the first failure is the report's `error`.
fn record(out: &mut GrpcReport, status: Result<(), Status>) {
    let code = status.as_ref().err().map_or(0, |s| s.code() as i32);
    *out.grpc_statuses.entry(code).or_default() += 1;
    if let (Err(s), None) = (status, &out.error) {
        out.error = Some(format!("{:?}: {}", s.code(), s.message()));
    }
}

type Client = tonic::client::Grpc<tonic::transport::Channel>;

async fn say(client: &mut Client, req: EchoRequest) -> Result<EchoReply, Status> {
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(format!("not ready: {e}")))?;
    let path = PathAndQuery::from_static(SAY);
    let codec = ProstCodec::<EchoRequest, EchoReply>::default();
    Ok(client
        .unary(Request::new(req), path, codec)
        .await?
        .into_inner())
}

/// One `Count` call; every item received is counted, also when the stream then fails.
async fn count(client: &mut Client, n: u32, received: &mut u64) -> Result<(), Status> {
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(format!("not ready: {e}")))?;
    let path = PathAndQuery::from_static(COUNT);
    let codec = ProstCodec::<CountRequest, CountReply>::default();
    let mut stream = client
        .server_streaming(Request::new(CountRequest { n }), path, codec)
        .await?
        .into_inner();
    while stream.message().await?.is_some() {
        *received += 1;
    }
    Ok(())
}
