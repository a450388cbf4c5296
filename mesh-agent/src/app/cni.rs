//! The agent's end of `sluice-cni`: a Unix socket where the plugin hands over each new pod
//! of this node and waits until the pod is captured, so the pod's app never runs
//! uncaptured (see `docs/cni.md`).
//!
//! An `add` gives the Kubernetes source the pod's netns and addresses, then waits for two
//! things: the source's verdict on the pod (the API server must have shown it), and, when
//! the verdict is to enroll, the pod among the captured ones.
use std::{
    collections::BTreeSet,
    io,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    time::{Duration, Instant},
};

use sluice_cni::protocol::{Command, MAX_LINE, Outcome, Request, Response};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
};
use tracing::{info, warn};

use crate::config::{
    WorkloadKey,
    kube::{CniPod, CniPods},
};

/// How long an `add` waits for the pod to be captured; the plugin's own timeout (30 s by
/// default) is longer, so the plugin gets the agent's reason rather than a timeout.
const ADD_DEADLINE: Duration = Duration::from_secs(25);
const POLL: Duration = Duration::from_millis(50);

/// Listens on `path` (replacing a socket an earlier agent left) and serves until the agent
/// stops.
pub fn serve(
    path: &Path,
    pods: CniPods,
    captured: watch::Receiver<BTreeSet<WorkloadKey>>,
) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    // Only root (the runtime running the plugin) may hand pods over.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    info!(socket = %path.display(), "listening for the CNI plugin");
    let path = path.to_owned();
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(exchange(stream, pods.clone(), captured.clone()));
                }
                Err(error) => {
                    warn!(socket = %path.display(), %error, "CNI socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

/// One request line in, one response line out.
async fn exchange(
    stream: UnixStream,
    pods: CniPods,
    captured: watch::Receiver<BTreeSet<WorkloadKey>>,
) {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read).take(MAX_LINE as u64);
    let response = match reader.read_until(b'\n', &mut line).await {
        Err(error) => Response::new(Outcome::Error, format!("reading the request: {error}")),
        Ok(_) => match Request::from_line(&line) {
            Err(error) => Response::new(Outcome::Error, format!("not a request: {error}")),
            Ok(request) => answer(request, &pods, captured).await,
        },
    };
    match response.to_line() {
        Ok(bytes) => {
            let _ = write.write_all(&bytes).await;
        }
        Err(error) => warn!(%error, "cannot encode a CNI response"),
    }
}

async fn answer(
    request: Request,
    pods: &CniPods,
    mut captured: watch::Receiver<BTreeSet<WorkloadKey>>,
) -> Response {
    let key = WorkloadKey {
        namespace: request.pod.namespace.clone(),
        name: request.pod.name.clone(),
    };
    match request.command {
        Command::Del => {
            pods.remove(&key);
            info!(pod = %key, "CNI DEL: released");
            Response::new(Outcome::Released, "")
        }
        Command::Check => match pods.verdict(&key) {
            Some(false) => Response::new(Outcome::NotEnrolled, "the label rule leaves it out"),
            Some(true) if captured.borrow().contains(&key) => Response::new(Outcome::Enrolled, ""),
            Some(true) => {
                Response::new(Outcome::Error, format!("{key} must be captured and is not"))
            }
            None => Response::new(Outcome::Error, format!("{key} is unknown to this agent")),
        },
        Command::Add => {
            let Some(netns) = request.netns.clone() else {
                return Response::new(Outcome::Error, "add without a netns");
            };
            pods.insert(
                key.clone(),
                CniPod {
                    uid: request.pod.uid.clone(),
                    netns: netns.clone(),
                    ips: request.ips.clone(),
                },
            );
            let started = Instant::now();
            let outcome = wait_captured(&key, pods, &mut captured).await;
            info!(pod = %key, netns = %netns.display(), ?outcome, waited = ?started.elapsed(), "CNI ADD");
            outcome
        }
    }
}

async fn wait_captured(
    key: &WorkloadKey,
    pods: &CniPods,
    captured: &mut watch::Receiver<BTreeSet<WorkloadKey>>,
) -> Response {
    let deadline = Instant::now() + ADD_DEADLINE;
    loop {
        match pods.verdict(key) {
            Some(false) => {
                return Response::new(Outcome::NotEnrolled, "the label rule leaves it out");
            }
            Some(true) if captured.borrow_and_update().contains(key) => {
                return Response::new(Outcome::Enrolled, "");
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            let why = match pods.verdict(key) {
                None => "the API server has not shown this pod to the agent",
                Some(_) => "it is not captured yet (see /config_dump: source.waitingPods)",
            };
            return Response::new(
                Outcome::Error,
                format!("{key}: {why} after {ADD_DEADLINE:?}"),
            );
        }
        let _ = tokio::time::timeout(POLL, captured.changed()).await;
    }
}
