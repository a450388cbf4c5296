//! Inbound delivery: the proxy connects to the app from inside the pod's netns with the
//! real client's address as source (a transparent socket), so the app's `getpeername` and
//! logs show the caller rather than the proxy.
//!
//! The app's replies go to the client's address, which is not local: a policy route in the
//! pod netns sends packets marked [`DELIVERY_MARK`] to `lo`, where the transparent socket
//! takes them. The delivery socket carries the mark, and the kernel copies it from the SYN
//! onto the app's accepted socket (`tcp_fwmark_accept`), so exactly the replies of delivered
//! connections follow that route and nothing else in the pod changes; the kernel's own
//! replies that no socket sends (the reset for a port nothing listens on) copy the mark of
//! the packet they answer (`fwmark_reflect`). No netfilter rule is involved, so it works the
//! same under every redirect mode.
use std::{
    io,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use mesh_common::{DELIVERY_MARK, DELIVERY_ROUTE_TABLE};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

use crate::sys::{
    exec::{self, NetnsTarget},
    netns::{Netns, NetnsError},
};

/// Priority of the delivery route's rule: ahead of the main table (32766).
const RULE_PRIORITY: &str = "32000";

/// How many sockets to try before giving up on a source port other than the client's.
const SOURCE_PORT_ATTEMPTS: usize = 4;

/// Lets the steering in front of a pod tell the proxy's own delivery from a client's
/// connection. eBPF's sk_lookup sees the delivery arrive at the app's address like any
/// other connection; netfilter's inbound rule (nat PREROUTING) never sees locally made
/// connections, so it needs nothing.
///
/// The exemption lasts as long as the delivered connection, not only its connect: a packet
/// of an established connection reaches the listener lookup (and so sk_lookup) whenever the
/// app's side has no full socket yet, as when the app's accept queue overflows and the
/// kernel answers with SYN cookies. Steered to the proxy, such a packet would reset the
/// delivery.
pub trait SteeringExemption: Send + Sync {
    /// The proxy is about to connect `from` → `to`: let it reach the app.
    fn begin(&self, from: SocketAddr, to: SocketAddr) -> io::Result<()>;
    /// That connection is over (closed, or its connect failed).
    fn end(&self, from: SocketAddr, to: SocketAddr);
}

/// A delivery's exemption, ended when dropped: keep it as long as the connection lives.
pub struct Exempted {
    exemption: Arc<dyn SteeringExemption>,
    from: SocketAddr,
    to: SocketAddr,
}

impl Drop for Exempted {
    fn drop(&mut self) {
        self.exemption.end(self.from, self.to);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// In a container, a read-only file system here means `procSysNet` is the container's
    /// own `/proc/sys/net` rather than a mount of the host's.
    #[error("setting net.{sysctl} through {}: {error}", path.display())]
    Sysctl {
        sysctl: String,
        path: PathBuf,
        error: io::Error,
    },
    #[error(transparent)]
    Route(#[from] exec::ExecError),
}

/// Installs the return route for deliveries in the pod's netns (idempotent). It stays when
/// the pod leaves the mesh: connections delivered before still need it, and it only ever
/// matches the proxy's own marked sockets.
/// The sysctls are written through `proc_sys_net` (a `/proc/sys/net`) from inside the netns.
pub fn prepare_netns(netns: &Netns, ipv6: bool, proc_sys_net: &Path) -> Result<(), PrepareError> {
    let mut sysctls = vec!["ipv4/tcp_fwmark_accept", "ipv4/fwmark_reflect"];
    if ipv6 {
        sysctls.push("ipv6/fwmark_reflect");
    }
    for sysctl in sysctls {
        let path = proc_sys_net.join(sysctl);
        netns
            .run(|| std::fs::write(&path, "1"))?
            .map_err(|error| PrepareError::Sysctl {
                sysctl: sysctl.replace('/', "."),
                path,
                error,
            })?;
    }
    let target = NetnsTarget::Pod(netns);
    let table = DELIVERY_ROUTE_TABLE.to_string();
    let mark = format!("{DELIVERY_MARK:#x}");
    let families: &[(&str, &str)] = if ipv6 {
        &[("-4", "0.0.0.0/0"), ("-6", "::/0")]
    } else {
        &[("-4", "0.0.0.0/0")]
    };
    for (family, everything) in families {
        let rule = [
            *family,
            "rule",
            "add",
            "fwmark",
            &mark,
            "lookup",
            &table,
            "pref",
            RULE_PRIORITY,
        ];
        match exec::run(target, "ip", &rule, "") {
            Ok(_) => {}
            // Already there (an earlier enrollment, or an earlier agent).
            Err(exec::ExecError::Failed { stderr, .. }) if stderr.contains("File exists") => {}
            Err(e) => return Err(e.into()),
        }
        let route = [
            *family, "route", "replace", "local", everything, "dev", "lo", "table", &table,
        ];
        exec::run(target, "ip", &route, "")?;
    }
    Ok(())
}

/// Connects to the app at `app` from the client's address, inside the pod's netns. The
/// connection stays exempt from the pod's steering until the returned guard is dropped.
pub async fn connect(
    netns: &Netns,
    client: SocketAddr,
    app: SocketAddr,
    timeout: Duration,
    exemption: Arc<dyn SteeringExemption>,
) -> io::Result<(TcpStream, Exempted)> {
    let socket = netns
        .run(|| transparent_socket(client))
        .map_err(io::Error::other)??;
    let from = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("delivery socket has no IP address"))?;
    exemption.begin(from, app)?;
    let exempted = Exempted {
        exemption,
        from,
        to: app,
    };
    let socket = TcpSocket::from_std_stream(socket.into());
    match tokio::time::timeout(timeout, socket.connect(app)).await {
        Ok(connected) => Ok((connected?, exempted)),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("delivery to {app} timed out after {timeout:?}"),
        )),
    }
}

/// A socket bound to the client's address on a port other than the client's own: with the
/// same port, the app's socket would have the very 4-tuple of the proxy's accepted one.
fn transparent_socket(client: SocketAddr) -> io::Result<Socket> {
    let mut rejected = Vec::new();
    for _ in 0..SOURCE_PORT_ATTEMPTS {
        let socket = Socket::new(
            Domain::for_address(client),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_nonblocking(true)?;
        socket.set_mark(DELIVERY_MARK)?;
        socket.set_tcp_nodelay(true)?;
        if client.is_ipv4() {
            socket.set_ip_transparent_v4(true)?;
        } else {
            set_ipv6_transparent(&socket)?;
        }
        let any_port = SocketAddr::new(client.ip(), 0);
        socket.bind(&SockAddr::from(any_port))?;
        let port = socket.local_addr()?.as_socket().map(|a| a.port());
        if port != Some(client.port()) {
            return Ok(socket);
        }
        // Held until we return, so the next bind gets another port.
        rejected.push(socket);
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no source port other than {} for {client}", client.port()),
    ))
}

fn set_ipv6_transparent(socket: &Socket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_IPV6,
            libc::IPV6_TRANSPARENT,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
