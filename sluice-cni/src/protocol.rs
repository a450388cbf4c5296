//! What the plugin and the agent say to each other over the agent's Unix socket.
//!
//! One connection carries one exchange: the plugin writes a [`Request`] as one JSON line, the
//! agent answers with one [`Response`] line and both close. One exchange per connection keeps
//! both sides free of framing state, and lets the agent hold an `add` open until the pod is
//! really enrolled: the plugin's ADD, and so the pod's sandbox, waits for that answer.
//!
//! This module needs only serde, serde_json, thiserror and std, so the agent can take it with
//! `default-features = false` and without the plugin's Kubernetes client.
use std::fmt;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Where the agent listens unless the plugin's config says `agentSocket`.
pub const DEFAULT_SOCKET: &str = "/var/run/sluice/cni.sock";

/// The longest line either side reads: a request names one pod and a handful of addresses, so
/// anything longer is a peer that is not speaking this protocol.
pub const MAX_LINE: usize = 64 * 1024;

/// What the runtime asked the plugin to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// The pod's sandbox is being created: enroll it (if the label rule says so) before
    /// answering, so its app never runs uncaptured.
    Add,
    /// The sandbox is being torn down: release it. Unknown pods are `released` too, because
    /// the runtime may repeat a DEL.
    Del,
    /// Is the pod in the state ADD left it in?
    Check,
}

/// The Kubernetes pod a sandbox belongs to, from the runtime's `CNI_ARGS`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    /// `K8S_POD_UID`; absent when the runtime does not pass it. It tells a pod from a later
    /// one of the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The plugin's one line to the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub command: Command,
    /// `CNI_CONTAINERID`: the sandbox's id.
    pub container_id: String,
    /// `CNI_NETNS`: the pod's network namespace (a path); optional for `del`, whose netns may
    /// already be gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`.
    pub ifname: String,
    pub pod: PodRef,
    /// The pod's addresses from the previous plugin's result (`ips[].address`, prefix
    /// stripped), so the agent need not wait for the API server to learn them.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
}

impl Request {
    /// Parses one line as the agent receives it (a trailing newline is fine).
    pub fn from_line(line: &[u8]) -> Result<Request, serde_json::Error> {
        serde_json::from_slice(line)
    }

    /// The request as one line, newline included.
    pub fn to_line(&self) -> Result<Vec<u8>, serde_json::Error> {
        to_line(self)
    }
}

/// What the agent did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// The pod is captured now (`add`), or is captured as it should be (`check`).
    Enrolled,
    /// The label rule leaves this pod out of the mesh; nothing was done.
    NotEnrolled,
    /// The pod's capture is gone, or was never there (`del`).
    Released,
    /// The agent could not do what was asked; `message` says why. For `check`: the pod
    /// must be enrolled and is not.
    Error,
}

/// The agent's one line back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub outcome: Outcome,
    /// For people: why, or what went wrong. The plugin logs it and puts it in its CNI error.
    #[serde(default)]
    pub message: String,
}

impl Response {
    pub fn new(outcome: Outcome, message: impl Into<String>) -> Response {
        Response {
            outcome,
            message: message.into(),
        }
    }

    /// Parses the agent's line (a trailing newline is fine).
    pub fn from_line(line: &[u8]) -> Result<Response, serde_json::Error> {
        serde_json::from_slice(line)
    }

    /// The response as one line, newline included.
    pub fn to_line(&self) -> Result<Vec<u8>, serde_json::Error> {
        to_line(self)
    }
}

fn to_line<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    Ok(line)
}

/// Why an exchange failed. The plugin treats these differently: an agent that is not there
/// sends it to the API server for the label rule, one that is there but slow or wrong fails
/// the pod.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens: the socket file is missing (`ENOENT`) or left over from an agent that
    /// is gone (`ECONNREFUSED`).
    #[error("the agent is not listening on {}", path.display())]
    NotListening {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The agent did not answer in time (connect, write and read together).
    #[error("the agent on {} did not answer within {timeout:?}", path.display())]
    Timeout { path: PathBuf, timeout: Duration },
    /// Any other failure to connect, write or read (permissions, a reset, ...).
    #[error("cannot talk to the agent on {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The request cannot be written as JSON (a netns path that is not UTF-8).
    #[error("cannot encode the request")]
    Encode(#[source] serde_json::Error),
    /// The agent answered something that is not one protocol line.
    #[error("the agent on {} answered outside the protocol: {reason}", path.display())]
    BadReply { path: PathBuf, reason: String },
}

impl ClientError {
    /// True when no agent is there to ask (as opposed to one that failed to answer).
    pub fn agent_away(&self) -> bool {
        matches!(self, ClientError::NotListening { .. })
    }
}

/// Sends `req` to the agent on `socket` and waits for its answer, all within `timeout`.
pub fn exchange(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let deadline = Instant::now() + timeout;
    let line = req.to_line().map_err(ClientError::Encode)?;
    let timed_out = || ClientError::Timeout {
        path: socket.to_path_buf(),
        timeout,
    };
    let io_err = |source: io::Error| match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timed_out(),
        _ => ClientError::Io {
            path: socket.to_path_buf(),
            source,
        },
    };
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    };

    let mut stream = connect(socket, timeout)?;
    stream
        .set_write_timeout(Some(remaining().ok_or_else(timed_out)?))
        .map_err(io_err)?;
    stream.write_all(&line).map_err(io_err)?;

    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    while !reply.contains(&b'\n') {
        stream
            .set_read_timeout(Some(remaining().ok_or_else(timed_out)?))
            .map_err(io_err)?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        };
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&chunk[..n]);
        if reply.len() > MAX_LINE {
            return Err(bad_reply(socket, format!("more than {MAX_LINE} bytes")));
        }
    }
    let line = match reply.iter().position(|&b| b == b'\n') {
        Some(end) => &reply[..end],
        None if reply.is_empty() => {
            return Err(bad_reply(
                socket,
                "it closed the connection without answering",
            ));
        }
        None => &reply[..],
    };
    Response::from_line(line).map_err(|e| bad_reply(socket, e.to_string()))
}

fn bad_reply(socket: &Path, reason: impl Into<String>) -> ClientError {
    ClientError::BadReply {
        path: socket.to_path_buf(),
        reason: reason.into(),
    }
}

/// Connects within `timeout`. A blocking Unix connect waits without limit while the
/// listener's backlog is full (an agent that stopped accepting), and std has no
/// `connect_timeout` for Unix sockets, so the connect runs on its own thread; the plugin is a
/// short-lived process, so a thread left blocked ends with it.
fn connect(socket: &Path, timeout: Duration) -> Result<UnixStream, ClientError> {
    let (tx, rx) = mpsc::channel();
    let path = socket.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(UnixStream::connect(&path));
    });
    let path = socket.to_path_buf();
    match rx.recv_timeout(timeout) {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source))
            if matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            Err(ClientError::NotListening { path, source })
        }
        Ok(Err(source)) => Err(ClientError::Io { path, source }),
        Err(RecvTimeoutError::Timeout) => Err(ClientError::Timeout { path, timeout }),
        Err(RecvTimeoutError::Disconnected) => Err(ClientError::Io {
            path,
            source: io::Error::other("the connecting thread ended without a result"),
        }),
    }
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
