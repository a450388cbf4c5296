//! L7 scenarios against the real agent, each run in every redirect mode (`ebpf::*`,
//! `nftables::*`, `iptables::*`): an enrolled client pod calls a service's virtual address
//! (which no interface owns: only the capture makes it answer), and the agent serves HTTP
//! itself, routes, balances and retries each request over real server pods running
//! `sluice-httpapp`. Every request, status and header is judged from what the client and
//! the servers really saw, and the agent's metrics must agree.

use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tests::http_app::{
    self, GrpcCall, LoadOpts, RawOpts, count_requests, serve_banner, serve_grpc, serve_http,
    serve_tls,
};
use tests::identity::spiffe_id;
use tests::l7::{Bed, PORT, TARGET, VIP, metric, route, statuses, vip, web};
use tests::otlp::OtlpReceiver;
use tests::{Agent, AgentConfig, Mode, TestCa, Workload, poll_until};

tests::in_every_mode!(
    http1_and_http2_are_detected_and_served,
    tls_passes_through_with_its_server_name,
    a_server_first_protocol_gets_its_banner_at_once,
    a_slow_endpoint_gets_clearly_less_traffic,
    two_503s_then_200_is_retried_to_200,
    a_streamed_post_is_not_retried,
    the_budget_stops_a_retry_storm,
    a_hanging_endpoint_times_out_with_504,
    a_failing_endpoint_is_ejected_then_readmitted,
    the_rate_limit_answers_429,
    a_90_10_split_lands_within_tolerance,
    grpc_unary_and_streaming_calls_are_counted_by_status,
    metrics_trace_context_and_access_log_describe_each_request,
    bad_requests_get_their_status_while_others_are_served,
    requests_to_enrolled_endpoints_ride_the_mesh_tunnel,
    http1_clients_reach_an_http2_port_and_back,
    the_server_side_counts_requests_from_outside_the_mesh,
    the_pending_cap_answers_503_beyond_it,
);

/// Scenario 1: HTTP/1.1 and HTTP/2 prior knowledge to a port without `appProtocol` are
/// detected, served by the proxy (the server sees a request id and a trace context it did
/// not send) and counted as detected.
fn http1_and_http2_are_detected_and_served(mode: Mode) {
    let bed = Bed::new(&[("web-1", &[])]);
    let agent = Agent::start(&bed.node, bed.config(mode, web(json!({})))).unwrap();

    for http2 in [false, true] {
        let mut opts = LoadOpts::get("/echo").times(3, 1).bodies();
        if http2 {
            opts = opts.http2();
        }
        let report = bed.load(&opts);
        assert_eq!(statuses(&report), BTreeMap::from([(200, 3)]), "{report:?}");
        let echo = report.requests[0].echo().unwrap();
        assert_eq!(echo.version, if http2 { "HTTP/2.0" } else { "HTTP/1.1" });
        assert!(echo.headers.contains_key("x-request-id"), "{echo:?}");
        assert!(echo.headers.contains_key("traceparent"), "{echo:?}");
        assert!(
            echo.peer.starts_with(&format!("{}:", bed.client.ip())),
            "the endpoint saw the client pod's address: {echo:?}"
        );
    }
    for protocol in ["http1", "http2"] {
        let n = metric(
            &agent,
            "sluice_protocol_detected_total",
            &[("protocol", protocol)],
        );
        assert!(n >= 1.0, "{protocol} detected {n} times");
    }
    assert_eq!(count_requests(bed.server("web-1"), "/echo"), 6);
}

/// Scenario 1: a TLS client is passed through untouched (the server completes the
/// handshake with the client's SNI) and counted as `tls`.
fn tls_passes_through_with_its_server_name(mode: Mode) {
    let bed = Bed::serving("tls-1", |pod| serve_tls(pod, TARGET, "tls-1", &[]));
    let agent = Agent::start(&bed.node, bed.config(mode, web(json!({})))).unwrap();

    let report = http_app::tls_dial(&bed.client, vip(), "api.sluice.test", 100_000).unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.bytes_echoed, 100_000);
    assert_eq!(
        http_app::snis(bed.server("tls-1")),
        [Some("api.sluice.test".to_string())]
    );
    assert_eq!(
        metric(
            &agent,
            "sluice_protocol_detected_total",
            &[("protocol", "tls")]
        ),
        1.0
    );
}

/// Scenario 1: a server that speaks first gets its banner to the client with no wait for
/// the detection window (1 s by default): well under half of it.
fn a_server_first_protocol_gets_its_banner_at_once(mode: Mode) {
    let banner = "220 smtp.sluice.test ready";
    let bed = Bed::serving("smtp-1", |pod| serve_banner(pod, TARGET, banner, &[]));
    let agent = Agent::start(&bed.node, bed.config(mode, web(json!({})))).unwrap();

    for _ in 0..3 {
        let report = http_app::banner_dial(&bed.client, vip(), 5000).unwrap();
        assert_eq!(
            report.banner.as_deref(),
            Some("220 smtp.sluice.test ready"),
            "{report:?}"
        );
        let ms = report.first_byte_ms.unwrap();
        assert!(
            ms < 500.0,
            "the banner took {ms} ms: detection delayed a server-first protocol"
        );
    }
    let server_first = [("protocol", "opaque_server_first")];
    assert_eq!(
        metric(&agent, "sluice_protocol_detected_total", &server_first),
        3.0
    );
}

/// Scenario 2: over three endpoints, one answering 300 ms slower gets clearly less of 150
/// requests (fewer than half its equal share). The delay is large so that a slow kernel VM,
/// where every request takes tens of milliseconds, still tells the endpoints apart.
fn a_slow_endpoint_gets_clearly_less_traffic(mode: Mode) {
    let bed = Bed::new(&[
        ("web-1", &[]),
        ("web-2", &[]),
        ("slow", &["--delay-ms", "300"]),
    ]);
    let cfg = bed.config(
        mode,
        web(json!({"ports": [{"port": PORT, "targetPort": TARGET, "appProtocol": "http"}]})),
    );
    let _agent = Agent::start(&bed.node, cfg).unwrap();

    let report = bed.load(&LoadOpts::get("/echo").times(150, 4));
    assert_eq!(
        statuses(&report),
        BTreeMap::from([(200, 150)]),
        "{report:?}"
    );
    let served = |id: &str| report.by_served_by.get(id).copied().unwrap_or(0);
    let slow = served("slow");
    assert!(
        slow < 25,
        "the slow endpoint got {slow} of 150: {:?}",
        report.by_served_by
    );
    for fast in ["web-1", "web-2"] {
        assert!(served(fast) > 40, "{:?}", report.by_served_by);
    }
}

fn retry_rule(codes: &[u16], attempts: u32) -> serde_json::Value {
    json!({"retry": {"codes": codes, "attempts": attempts, "backoff": "10ms"}})
}

/// Scenario 3: an endpoint that answers 503 twice, then 200: the client sees 200 on the
/// third attempt and the retry counter shows 2.
fn two_503s_then_200_is_retried_to_200(mode: Mode) {
    let bed = Bed::new(&[("web-1", &[])]);
    let cfg = bed
        .config(mode, web(json!({})))
        .http_route(route(retry_rule(&[503], 3)));
    let agent = Agent::start(&bed.node, cfg).unwrap();

    let report = bed.load(&LoadOpts::get("/fail-then/2/503").header("x-test-key", "k1"));
    let only = &report.requests[0];
    assert_eq!(
        (only.status, only.attempt),
        (Some(200), Some(3)),
        "{report:?}"
    );
    let service = [("destination_service", "web.default.svc.cluster.local")];
    assert_eq!(metric(&agent, "sluice_http_retries_total", &service), 2.0);
    assert_eq!(count_requests(bed.server("web-1"), "/fail-then/2/503"), 3);
}

/// Scenario 3: a POST whose body streams (no length) is never retried: the 503 reaches
/// the client and the endpoint saw it once.
fn a_streamed_post_is_not_retried(mode: Mode) {
    let bed = Bed::new(&[("web-1", &[])]);
    let cfg = bed
        .config(mode, web(json!({})))
        .http_route(route(retry_rule(&[503], 3)));
    let agent = Agent::start(&bed.node, cfg).unwrap();

    let opts = LoadOpts::get("/fail-then/1/503")
        .method("POST")
        .body(4096)
        .chunked();
    let report = bed.load(&opts.header("x-test-key", "post"));
    assert_eq!(report.requests[0].status, Some(503), "{report:?}");
    assert_eq!(count_requests(bed.server("web-1"), "/fail-then/1/503"), 1);
    assert_eq!(metric(&agent, "sluice_http_retries_total", &[]), 0.0);
}

/// Scenario 3: when every request fails, the budget (20% of requests, no floor here) caps
/// the retries: 100 failing requests allowed 3 attempts each send at most 120, not 300.
fn the_budget_stops_a_retry_storm(mode: Mode) {
    let bed = Bed::new(&[("web-1", &[])]);
    let budget =
        json!({"trafficPolicy": {"retryBudget": {"ratio": 0.2, "minRetriesPerSecond": 0}}});
    let cfg = bed
        .config(mode, web(budget))
        .http_route(route(retry_rule(&[503], 2)));
    let agent = Agent::start(&bed.node, cfg).unwrap();

    let report = bed.load(&LoadOpts::get("/status/503").times(100, 2));
    assert_eq!(
        statuses(&report),
        BTreeMap::from([(503, 100)]),
        "{report:?}"
    );
    let reached = count_requests(bed.server("web-1"), "/status/503");
    assert!(
        (100..=121).contains(&reached),
        "the endpoint saw {reached} requests"
    );
    let retries = metric(&agent, "sluice_http_retries_total", &[]);
    assert!(retries <= 21.0, "{retries} retries");
    assert!(metric(&agent, "sluice_http_retry_budget_exhausted_total", &[]) >= 79.0);
}

/// Scenario 4: an endpoint that never answers gets the client a 504 at the route's
/// request timeout (not before it, not long after).
fn a_hanging_endpoint_times_out_with_504(mode: Mode) {
    let bed = Bed::new(&[("web-1", &[])]);
    let rule = json!({"timeouts": {"request": "300ms"}});
    let cfg = bed.config(mode, web(json!({}))).http_route(route(rule));
    let agent = Agent::start(&bed.node, cfg).unwrap();

    let report = bed.load(&LoadOpts::get("/hang").timeout_ms(5000));
    let only = &report.requests[0];
    assert_eq!(only.status, Some(504), "{report:?}");
    assert!(
        (300_000..2_000_000).contains(&only.latency_us),
        "{report:?}"
    );
    let timed_out = [("response_code", "504"), ("response_flags", "UT")];
    poll_until(Duration::from_secs(5), "the 504 counted", || {
        Ok((metric(&agent, "istio_requests_total", &timed_out) == 1.0).then_some(()))
    })
    .unwrap();
}

/// Scenario 5: an endpoint failing 3 times in a row (nothing listens: connect refused) is
/// ejected for the base ejection time (8 s: longer than 20 requests take even on a slow
/// kernel VM), so the client sees exactly 3 failures among 20 requests; once the time has passed it is taken back: with its app now up and the other
/// endpoint's gone, it serves nearly every request. The good endpoint answers 30 ms late,
/// so that the balancer (which never saw the failing one answer) keeps preferring the
/// failing one until the breaker takes it out.
fn a_failing_endpoint_is_ejected_then_readmitted(mode: Mode) {
    let mut bed = Bed::new(&[("good", &["--delay-ms", "30"])]);
    let bad = bed.node.add_pod("bad").unwrap();
    let breaker = json!({"trafficPolicy": {"circuitBreaker": {"consecutiveFailures": 3, "baseEjectionTime": "8s"}}});
    let cfg = bed
        .config(mode, web(breaker))
        .with(Workload::known(&bad).labels(&[("app", "web")]));
    let agent = Agent::start(&bed.node, cfg).unwrap();

    let report = bed.load(&LoadOpts::get("/echo").times(20, 1));
    assert_eq!(report.by_status.get(&503), Some(&3), "{report:?}");
    assert_eq!(report.by_served_by.get("good"), Some(&17), "{report:?}");
    let service = [("destination_service", "web.default.svc.cluster.local")];
    assert_eq!(
        metric(&agent, "sluice_endpoint_ejections_total", &service),
        1.0
    );

    let _bad_server = serve_http(&bad, TARGET, "bad", &[]).unwrap();
    bed.servers.clear();
    std::thread::sleep(Duration::from_millis(8500));
    let report = bed.load(&LoadOpts::get("/echo").times(40, 1));
    let served_by_bad = report.by_served_by.get("bad").copied().unwrap_or(0);
    assert!(
        served_by_bad >= 30,
        "readmitted after its ejection: {report:?}"
    );
}

/// Scenario 6: 2 requests per second with a burst of 5: of 30 requests sent back to back,
/// the burst and what refilled while they ran are answered (at least 5, at most 5 + 2 per
/// second the run took, +1), the rest get 429 and are counted.
fn the_rate_limit_answers_429(mode: Mode) {
    let bed = Bed::new(&[("web-1", &[])]);
    let limit = json!({"trafficPolicy": {"rateLimit": {"requestsPerSecond": 2, "burst": 5}}});
    let agent = Agent::start(&bed.node, bed.config(mode, web(limit))).unwrap();

    let started = std::time::Instant::now();
    let report = bed.load(&LoadOpts::get("/echo").times(30, 1));
    let refill = (started.elapsed().as_secs_f64() * 2.0).ceil() as u64;
    let ok = report.by_status.get(&200).copied().unwrap_or(0);
    let limited = report.by_status.get(&429).copied().unwrap_or(0);
    assert_eq!(ok + limited, 30, "{report:?}");
    assert!(
        (5..=6 + refill).contains(&ok),
        "{ok} allowed (refill {refill}): {report:?}"
    );
    assert!(limited >= 10, "{report:?}");
    let counted = metric(&agent, "sluice_http_rate_limited_total", &[]);
    assert_eq!(counted, limited as f64);
}

/// Scenario 7: a 90/10 weighted split of 1,000 requests between two services: the canary
/// gets 100 ± 40 (more than 4 standard deviations of a binomial(1000, 0.1)).
fn a_90_10_split_lands_within_tolerance(mode: Mode) {
    let bed = Bed::new(&[("stable", &[]), ("canary", &[])]);
    let stable = json!({"name": "web-stable", "vips": ["10.96.0.11"], "ports": [{"port": PORT, "targetPort": TARGET}], "addresses": [bed.servers[0].0.ip().to_string()]});
    let canary = json!({"name": "web-canary", "vips": ["10.96.0.12"], "ports": [{"port": PORT, "targetPort": TARGET}], "addresses": [bed.servers[1].0.ip().to_string()]});
    let split = json!({"backendRefs": [{"name": "web-stable", "weight": 90}, {"name": "web-canary", "weight": 10}]});
    let cfg = bed
        .config(mode, web(json!({})))
        .service(stable)
        .service(canary)
        .http_route(route(split));
    let _agent = Agent::start(&bed.node, cfg).unwrap();

    let report = bed.load(&LoadOpts::get("/echo").times(1000, 8).http2());
    assert_eq!(
        statuses(&report),
        BTreeMap::from([(200, 1000)]),
        "{report:?}"
    );
    let canary = report.by_served_by.get("canary").copied().unwrap_or(0);
    assert!((60..=140).contains(&canary), "canary got {canary} of 1000");
}

/// Scenario 8: gRPC unary and server-streaming calls through a `grpc` port; the statuses
/// in the trailers are counted per call.
fn grpc_unary_and_streaming_calls_are_counted_by_status(mode: Mode) {
    let bed = Bed::serving("grpc-1", |pod| serve_grpc(pod, TARGET, "grpc-1", &[]));
    let service =
        web(json!({"ports": [{"port": PORT, "targetPort": TARGET, "appProtocol": "grpc"}]}));
    let agent = Agent::start(&bed.node, bed.config(mode, service)).unwrap();
    let client = &bed.client;

    let ok = http_app::grpc_call(client, vip(), GrpcCall::Unary { n: 5, fail_code: 0 }).unwrap();
    assert!(ok.ok, "{ok:?}");
    assert_eq!(ok.messages_received, 5);
    let failed = http_app::grpc_call(
        client,
        vip(),
        GrpcCall::Unary {
            n: 3,
            fail_code: 14,
        },
    )
    .unwrap();
    assert_eq!(
        failed.grpc_statuses,
        BTreeMap::from([(14, 3)]),
        "{failed:?}"
    );
    let stream = http_app::grpc_call(client, vip(), GrpcCall::Stream { n: 50 }).unwrap();
    assert!(stream.ok && stream.messages_received == 50, "{stream:?}");

    let grpc = |status: &str| {
        metric(
            &agent,
            "istio_requests_total",
            &[
                ("request_protocol", "grpc"),
                ("grpc_response_status", status),
            ],
        )
    };
    poll_until(Duration::from_secs(5), "gRPC statuses counted", || {
        Ok((grpc("0") == 6.0 && grpc("14") == 3.0).then_some(()))
    })
    .unwrap();
}

/// Scenario 9: Istio's request metrics carry the codes and both workloads, a caller's
/// `traceparent` is continued (same trace, new span), each request's span reaches an OTLP
/// collector (the test's own receiver) with the ids the server saw, and the access log has
/// a JSON line per request with its code and request id.
fn metrics_trace_context_and_access_log_describe_each_request(mode: Mode) {
    let bed = Bed::new(&[("web-1", &[])]);
    let collector = OtlpReceiver::start_in(&bed.node.netns_path()).unwrap();
    let cfg = bed
        .config(mode, web(json!({})))
        .proxy_setting("accessLog", json!("json"))
        .tracing(&format!("http://{}", collector.addr()), 1.0);
    let agent = Agent::start(&bed.node, cfg).unwrap();

    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traced = LoadOpts::get("/echo")
        .header("traceparent", parent)
        .header("x-request-id", "req-42");
    let report = bed.load(&traced.bodies());
    let echo = report.requests[0].echo().unwrap();
    let sent = &echo.headers["traceparent"];
    assert!(
        sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{sent}"
    );
    assert!(
        !sent.contains("00f067aa0ba902b7"),
        "the proxy's hop is a new span: {sent}"
    );
    assert_eq!(echo.headers["x-request-id"], "req-42");
    bed.load(&LoadOpts::get("/status/404").times(2, 1));

    let labels = |code: &'static str| {
        [
            ("reporter", "source"),
            ("source_workload", "client"),
            ("destination_workload", "web-1"),
            ("destination_service", "web.default.svc.cluster.local"),
            ("destination_service_name", "web"),
            ("request_protocol", "http"),
            ("response_code", code),
        ]
    };
    poll_until(Duration::from_secs(5), "request metrics", || {
        let ok = metric(&agent, "istio_requests_total", &labels("200"));
        let missing = metric(&agent, "istio_requests_total", &labels("404"));
        Ok((ok == 1.0 && missing == 2.0).then_some(()))
    })
    .unwrap();
    let duration = metric(
        &agent,
        "istio_request_duration_milliseconds_count",
        &labels("404"),
    );
    assert_eq!(duration, 2.0);

    let log = agent.log();
    let lines: Vec<serde_json::Value> = (log.lines())
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v.get("response_code").is_some())
        .collect();
    assert_eq!(lines.len(), 3, "{log}");
    assert_eq!(lines[0]["request_id"], "req-42");
    assert_eq!(lines[0]["response_code"], 200);
    assert_eq!(lines[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(lines[2]["response_code"], 404);
    assert_eq!(
        lines[2]["upstream_cluster"],
        "web.default.svc.cluster.local"
    );

    let spans = collector.wait_for(3, Duration::from_secs(10)).unwrap();
    let continued = (spans.iter())
        .find(|s| s.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736")
        .unwrap_or_else(|| panic!("no span of the caller's trace: {spans:?}"));
    assert_eq!(
        continued.parent_span_id.as_deref(),
        Some("00f067aa0ba902b7")
    );
    assert!(
        sent.contains(&continued.span_id),
        "the span the server was told of: {sent}"
    );
    assert_eq!(continued.attributes["http.response.status_code"], "200");
    assert_eq!(continued.service_name, "sluice-proxy");
    let not_found: Vec<_> = (spans.iter())
        .filter(|s| {
            s.attributes
                .get("http.response.status_code")
                .map(String::as_str)
                == Some("404")
        })
        .collect();
    assert_eq!(not_found.len(), 2, "{spans:?}");
    assert!(
        not_found.iter().all(|s| s.parent_span_id.is_none()),
        "new traces: {spans:?}"
    );
}

/// Scenario 10: a malformed request gets 400, oversized headers 431, a client trickling
/// its header is cut at the header timeout; each is counted, and a normal client is served
/// all the while.
fn bad_requests_get_their_status_while_others_are_served(mode: Mode) {
    let bed = Bed::new(&[("web-1", &[])]);
    let service =
        web(json!({"ports": [{"port": PORT, "targetPort": TARGET, "appProtocol": "http"}]}));
    let cfg = bed
        .config(mode, service)
        .proxy_setting("headerReadTimeout", json!("1s"))
        .proxy_setting("maxHeaderBytes", json!(16384));
    let agent = Agent::start(&bed.node, cfg).unwrap();
    let steady = http_app::spawn_http_load(
        &bed.client,
        vip(),
        &LoadOpts::get("/echo").times(200, 1).rate(50.0),
    )
    .unwrap();

    let garbage = http_app::raw_send(
        &bed.client,
        vip(),
        &RawOpts::new("GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"),
    )
    .unwrap();
    assert!(
        garbage
            .status_line
            .as_deref()
            .is_some_and(|l| l.contains(" 400 ")),
        "{garbage:?}"
    );
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    let oversized = http_app::raw_send(&bed.client, vip(), &RawOpts::new(&big)).unwrap();
    assert!(
        oversized
            .status_line
            .as_deref()
            .is_some_and(|l| l.contains(" 431 ")),
        "{oversized:?}"
    );
    let trickle = RawOpts {
        trickle_ms: Some(100),
        ..RawOpts::new(
            "GET /echo HTTP/1.1\r\nHost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n",
        )
    };
    let slow = http_app::raw_send(&bed.client, vip(), &trickle).unwrap();
    assert!(slow.closed_by_peer, "{slow:?}");
    assert!(
        slow.elapsed_ms < 3000,
        "cut at the 1 s header timeout: {slow:?}"
    );

    let steady =
        http_app::finish_load(steady, &LoadOpts::get("/echo").times(200, 1).rate(50.0)).unwrap();
    assert_eq!(
        statuses(&steady),
        BTreeMap::from([(200, 200)]),
        "{steady:?}"
    );
    for reason in ["malformed", "header_too_large", "header_timeout"] {
        let n = metric(
            &agent,
            "sluice_http_bad_requests_total",
            &[("reason", reason)],
        );
        assert_eq!(n, 1.0, "{reason}");
    }
}

/// Requests to endpoints in the mesh go through the mutual-TLS tunnel: the server's proxy
/// delivers them from the client pod's address, the request metrics say `mutual_tls` with
/// the endpoint's SPIFFE identity, and five keep-alive requests share one upstream
/// connection (one tunnel stream).
fn requests_to_enrolled_endpoints_ride_the_mesh_tunnel(mode: Mode) {
    let bed = Bed::new(&[("web-1", &[])]);
    let ca = TestCa::new().unwrap();
    let http = web(json!({"ports": [{"port": PORT, "targetPort": TARGET, "appProtocol": "http"}]}));
    let cfg = AgentConfig::new(&bed.node)
        .mode(mode)
        .identity(ca.identity())
        .with(Workload::enrolled(&bed.client))
        .with(Workload::enrolled(&bed.servers[0].0).labels(&[("app", "web")]))
        .service(http);
    let agent = Agent::start(&bed.node, cfg).unwrap();

    let report = bed.load(&LoadOpts::get("/echo").times(5, 1).bodies());
    assert_eq!(statuses(&report), BTreeMap::from([(200, 5)]), "{report:?}");
    let echo = report.requests[4].echo().unwrap();
    assert!(
        echo.peer.starts_with(&format!("{}:", bed.client.ip())),
        "{echo:?}"
    );
    let mtls = [
        ("reporter", "source"),
        ("connection_security_policy", "mutual_tls"),
        ("destination_workload", "web-1"),
    ];
    let endpoint = spiffe_id("default", "default");
    poll_until(Duration::from_secs(5), "mutual_tls request metrics", || {
        let m = agent.metrics()?;
        let n = m.sum("istio_requests_total", &mtls);
        let principal_ok = m.get("istio_requests_total", &mtls).is_some_and(|_| {
            m.matching("istio_requests_total", &mtls)
                .all(|s| s.labels.get("destination_principal") == Some(&endpoint))
        });
        Ok((n == 5.0 && principal_ok).then_some(()))
    })
    .unwrap();
    assert_eq!(
        metric(&agent, "sluice_hbone_streams_total", &[]),
        1.0,
        "one pooled upstream connection"
    );
    let server_side = [
        ("reporter", "destination"),
        ("connection_security_policy", "mutual_tls"),
        ("source_workload", "client"),
        ("source_principal", endpoint.as_str()),
        ("destination_service_name", "web"),
        ("response_code", "200"),
    ];
    assert_eq!(
        metric(&agent, "istio_requests_total", &server_side),
        5.0,
        "counted where they land"
    );
}

/// HTTP/1.1 clients to a port declared `http2` are carried over HTTP/2 to the endpoint
/// and answered in HTTP/1.1; HTTP/2 clients to an `http` port the other way round.
fn http1_clients_reach_an_http2_port_and_back(mode: Mode) {
    let bed = Bed::new(&[("web-1", &[])]);
    let h2_port = json!({"port": PORT, "targetPort": TARGET, "appProtocol": "http2"});
    let h1_port = json!({"port": 81, "targetPort": TARGET, "appProtocol": "http"});
    let cfg = bed.config(mode, web(json!({"ports": [h2_port, h1_port]})));
    let _agent = Agent::start(&bed.node, cfg).unwrap();

    let h1_to_h2 = bed.load(&LoadOpts::get("/echo").times(3, 1).bodies());
    assert_eq!(
        statuses(&h1_to_h2),
        BTreeMap::from([(200, 3)]),
        "{h1_to_h2:?}"
    );
    let echo = h1_to_h2.requests[0].echo().unwrap();
    assert_eq!(echo.version, "HTTP/2.0");
    // The client's authority, once (RFC 9113 §8.3.1: no Host beside :authority).
    assert_eq!(echo.authority.as_deref(), Some("10.96.0.10:80"), "{echo:?}");
    assert!(!echo.headers.contains_key("host"), "{echo:?}");
    let port_81 = SocketAddr::new(VIP.parse().unwrap(), 81);
    let h2_to_h1 = http_app::http_load(
        &bed.client,
        port_81,
        &LoadOpts::get("/echo").times(3, 1).http2().bodies(),
    )
    .unwrap();
    assert_eq!(
        statuses(&h2_to_h1),
        BTreeMap::from([(200, 3)]),
        "{h2_to_h1:?}"
    );
    let echo = h2_to_h1.requests[0].echo().unwrap();
    assert_eq!(echo.version, "HTTP/1.1");
    assert!(
        echo.headers.contains_key("host"),
        "an HTTP/1 request needs a Host: {echo:?}"
    );
}

/// A client outside the mesh calling an enrolled pod's port that a service declares as
/// HTTP: the pod's proxy serves the requests on the server side, counts each one
/// (`reporter="destination"`, plaintext) and the app still sees the client's address.
fn the_server_side_counts_requests_from_outside_the_mesh(mode: Mode) {
    let bed = Bed::new(&[("web-1", &[])]);
    let http = web(json!({"ports": [{"port": PORT, "targetPort": TARGET, "appProtocol": "http"}]}));
    let server = &bed.servers[0].0;
    let cfg = AgentConfig::new(&bed.node)
        .mode(mode)
        .with(Workload::known(&bed.client))
        .with(Workload::enrolled(server).labels(&[("app", "web")]))
        .service(http);
    let agent = Agent::start(&bed.node, cfg).unwrap();

    let direct = SocketAddr::new(server.ip().into(), TARGET);
    for http2 in [false, true] {
        let mut opts = LoadOpts::get("/status/201").times(3, 1);
        if http2 {
            opts = opts.http2();
        }
        let report = http_app::http_load(&bed.client, direct, &opts).unwrap();
        assert_eq!(statuses(&report), BTreeMap::from([(201, 3)]), "{report:?}");
    }
    let echo = http_app::http_load(&bed.client, direct, &LoadOpts::get("/echo").bodies()).unwrap();
    let echo = echo.requests[0].echo().unwrap();
    assert!(
        echo.peer.starts_with(&format!("{}:", bed.client.ip())),
        "{echo:?}"
    );
    let server_side = [
        ("reporter", "destination"),
        ("source_workload", "client"),
        ("destination_workload", "web-1"),
        ("destination_service", "web.default.svc.cluster.local"),
        ("connection_security_policy", "none"),
        ("response_code", "201"),
    ];
    poll_until(
        Duration::from_secs(5),
        "server-side request metrics",
        || Ok((metric(&agent, "istio_requests_total", &server_side) == 6.0).then_some(())),
    )
    .unwrap();
}

/// Scenario 5, the other half of circuit breaking: with at most 2 requests pending for the
/// service, 6 slow requests at once get 2 answers and 4 immediate 503s (`UO`), counted.
fn the_pending_cap_answers_503_beyond_it(mode: Mode) {
    let bed = Bed::new(&[("web-1", &[])]);
    let cap = json!({"trafficPolicy": {"circuitBreaker": {"maxPendingRequests": 2}}});
    let agent = Agent::start(&bed.node, bed.config(mode, web(cap))).unwrap();

    let report = bed.load(&LoadOpts::get("/delay/3000").times(6, 6).http2());
    assert_eq!(
        statuses(&report),
        BTreeMap::from([(200, 2), (503, 4)]),
        "{report:?}"
    );
    // Refused without waiting for the endpoint: well before the 3 s any answer takes.
    let refused = report.requests.iter().filter(|r| r.status == Some(503));
    assert!(
        refused.clone().all(|r| r.latency_us < 2_500_000),
        "refused at once: {report:?}"
    );
    assert_eq!(
        metric(&agent, "sluice_http_pending_overflow_total", &[]),
        4.0
    );
    let flagged = [("response_code", "503"), ("response_flags", "UO")];
    poll_until(Duration::from_secs(5), "503 UO counted", || {
        Ok((metric(&agent, "istio_requests_total", &flagged) == 4.0).then_some(()))
    })
    .unwrap();
}
