use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixListener;

use super::*;
use crate::testutil::Scratch;

fn request() -> Request {
    Request {
        command: Command::Add,
        container_id: "abc123".into(),
        netns: Some("/var/run/netns/cni-1".into()),
        ifname: "eth0".into(),
        pod: PodRef {
            namespace: "shop".into(),
            name: "web-0".into(),
            uid: Some("uid-1".into()),
        },
        ips: vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
    }
}

#[test]
fn the_wire_format_is_the_documented_one() {
    let line = request().to_line().unwrap();
    assert_eq!(line.last(), Some(&b'\n'));
    let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "command": "add", "containerId": "abc123", "netns": "/var/run/netns/cni-1",
            "ifname": "eth0", "pod": {"namespace": "shop", "name": "web-0", "uid": "uid-1"},
            "ips": ["10.0.0.5", "fd00::5"]
        })
    );
    assert_eq!(Request::from_line(&line).unwrap(), request());

    let del = Request::from_line(
        br#"{"command":"del","containerId":"c","ifname":"eth0","pod":{"namespace":"a","name":"b"}}"#,
    )
    .unwrap();
    assert_eq!(
        (del.command, del.netns, del.pod.uid),
        (Command::Del, None, None)
    );
    assert!(del.ips.is_empty());

    for (outcome, word) in [
        (Outcome::Enrolled, "enrolled"),
        (Outcome::NotEnrolled, "notEnrolled"),
        (Outcome::Released, "released"),
        (Outcome::Error, "error"),
    ] {
        let line = Response::new(outcome, "why").to_line().unwrap();
        let want = format!("{{\"outcome\":\"{word}\",\"message\":\"why\"}}\n");
        assert_eq!(String::from_utf8(line).unwrap(), want);
    }
    assert_eq!(
        Response::from_line(br#"{"outcome":"released"}"#).unwrap(),
        Response::new(Outcome::Released, "")
    );
}

/// Serves one connection with `answer` (raw bytes, or nothing then hold the connection).
fn serve_once(
    listener: UnixListener,
    answer: Option<&'static [u8]>,
) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        match answer {
            Some(bytes) => reader.get_mut().write_all(bytes).unwrap(),
            None => std::thread::sleep(Duration::from_millis(800)),
        }
        line
    })
}

#[test]
fn exchange_sends_one_line_and_reads_one_back() {
    let dir = Scratch::new("exchange");
    let sock = dir.path().join("cni.sock");
    let server = serve_once(
        UnixListener::bind(&sock).unwrap(),
        Some(b"{\"outcome\":\"enrolled\",\"message\":\"captured\"}\n"),
    );
    let resp = exchange(&sock, &request(), Duration::from_secs(5)).unwrap();
    assert_eq!(resp, Response::new(Outcome::Enrolled, "captured"));
    let sent = server.join().unwrap();
    assert_eq!(Request::from_line(sent.as_bytes()).unwrap(), request());
}

#[test]
fn an_absent_or_stale_socket_is_an_agent_away() {
    let dir = Scratch::new("away");
    let missing = dir.path().join("missing.sock");
    let err = exchange(&missing, &request(), Duration::from_secs(1)).unwrap_err();
    assert!(err.agent_away(), "{err:?}");

    // A socket file whose listener is gone: ECONNREFUSED.
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let err = exchange(&stale, &request(), Duration::from_secs(1)).unwrap_err();
    assert!(err.agent_away(), "{err:?}");
}

#[test]
fn a_silent_agent_times_out_and_is_not_away() {
    let dir = Scratch::new("silent");
    let sock = dir.path().join("cni.sock");
    let server = serve_once(UnixListener::bind(&sock).unwrap(), None);
    let started = Instant::now();
    let err = exchange(&sock, &request(), Duration::from_millis(300)).unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    assert!(!err.agent_away());
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    server.join().unwrap();
}

#[test]
fn replies_outside_the_protocol_are_bad_replies() {
    let dir = Scratch::new("bad");
    for (i, answer) in [
        &b"not json\n"[..],
        &b""[..],
        &b"{\"outcome\":\"maybe\"}\n"[..],
    ]
    .into_iter()
    .enumerate()
    {
        let sock = dir.path().join(format!("{i}.sock"));
        let server = serve_once(UnixListener::bind(&sock).unwrap(), Some(answer));
        let err = exchange(&sock, &request(), Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(err, ClientError::BadReply { .. }),
            "{answer:?}: {err:?}"
        );
        server.join().unwrap();
    }
}
