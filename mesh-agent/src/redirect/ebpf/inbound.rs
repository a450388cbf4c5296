//! Inbound steering: the `sk_lookup` program attached to each enrolled pod's netns, and the
//! maps it reads (the pod's addresses and exclusions, its inbound listeners, the proxy's
//! live deliveries).
//!
//! Enrolling a pod fills the maps before attaching, so no connection is steered to a
//! listener that is not there; releasing detaches first. Each pod's link is pinned under
//! `<pins>/inbound/<namespace>_<name>` (see [`pin_name`]), so steering outlives an agent
//! restart and the next agent finds it.
use std::{
    collections::BTreeMap,
    fs::File,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::{
    Ebpf,
    maps::{HashMap, MapData, SockHash},
    programs::{SkLookup, links::FdLink},
};
use mesh_common::{ConnTuple, InboundPod, MAX_EXCLUDED_PORTS, PodIp, maps as map_names};
use serde_json::{Value, json};
use tracing::debug;

use super::{EbpfError, attach, maps};
use crate::{config::WorkloadKey, redirect::CaptureSpec};

pub(super) const PROGRAM: &str = "steer_inbound";

/// A pod's attached program.
struct PodLink {
    _link: FdLink,
    pin: PathBuf,
    netns: PathBuf,
    ips: Vec<IpAddr>,
    exclude_ports: Vec<u16>,
}

pub(super) struct InboundSteering {
    pin_dir: PathBuf,
    pods: HashMap<MapData, PodIp, InboundPod>,
    listeners: SockHash<MapData, PodIp>,
    links: BTreeMap<WorkloadKey, PodLink>,
}

/// The proxy's live deliveries, written on every inbound connection: kept apart from
/// the enrollment state so connections never wait on an enrollment.
pub(super) struct Deliveries(Mutex<HashMap<MapData, ConnTuple, u8>>);

impl InboundSteering {
    /// Loads the program (attached per pod later) and takes its maps.
    pub fn load(ebpf: &mut Ebpf, pin_dir: PathBuf) -> Result<(Self, Deliveries), EbpfError> {
        let program: &mut SkLookup = attach::program(ebpf, PROGRAM)?;
        program.load().map_err(|error| EbpfError::Program {
            name: PROGRAM,
            error,
        })?;
        std::fs::create_dir_all(&pin_dir).map_err(|error| EbpfError::PinDir {
            path: pin_dir.clone(),
            error,
        })?;
        let deliveries = Deliveries(Mutex::new(maps::take(ebpf, map_names::DELIVERIES)?));
        let steering = Self {
            pin_dir,
            pods: maps::take(ebpf, map_names::INBOUND_PODS)?,
            listeners: maps::take(ebpf, map_names::INBOUND_LISTENERS)?,
            links: BTreeMap::new(),
        };
        Ok((steering, deliveries))
    }

    /// Starts (or updates) steering the pod's inbound connections to `sockets`, its
    /// listening sockets by bound address (one per address family).
    pub fn enroll(
        &mut self,
        ebpf: &mut Ebpf,
        spec: &CaptureSpec,
        sockets: &[(SocketAddr, std::os::fd::BorrowedFd<'_>)],
    ) -> Result<(), EbpfError> {
        let value = inbound_pod(&spec.exclude_inbound_ports);
        for ip in &spec.ips {
            let key = pod_ip(*ip);
            let socket = sockets
                .iter()
                .find(|(addr, _)| addr.is_ipv4() == ip.is_ipv4())
                .ok_or(EbpfError::NoInboundListener { ip: *ip })?;
            self.listeners
                .insert(key, socket.1, 0)
                .map_err(map_error(map_names::INBOUND_LISTENERS))?;
            self.pods
                .insert(key, value, 0)
                .map_err(map_error(map_names::INBOUND_PODS))?;
        }
        // Addresses the pod no longer has (updates keep the same IPs; this is for safety).
        if let Some(old) = self.links.get_mut(&spec.key) {
            let gone: Vec<IpAddr> = old
                .ips
                .iter()
                .filter(|ip| !spec.ips.contains(ip))
                .copied()
                .collect();
            old.ips = spec.ips.clone();
            old.exclude_ports = spec.exclude_inbound_ports.clone();
            for ip in gone {
                self.forget_address(ip)?;
            }
            return Ok(());
        }
        let link = self.attach(ebpf, spec)?;
        self.links.insert(spec.key.clone(), link);
        Ok(())
    }

    fn attach(&self, ebpf: &mut Ebpf, spec: &CaptureSpec) -> Result<PodLink, EbpfError> {
        let netns = File::open(&spec.netns).map_err(|error| EbpfError::Netns {
            path: spec.netns.clone(),
            error,
        })?;
        let program: &mut SkLookup = attach::program(ebpf, PROGRAM)?;
        let program_err = |error| EbpfError::Program {
            name: PROGRAM,
            error,
        };
        let id = program.attach(&netns).map_err(program_err)?;
        let link = program.take_link(id).map_err(program_err)?;
        let pin = self.pin_path(&spec.key);
        let link = attach::pin_link(link.into(), &pin)?;
        debug!(pod = %spec.key, pin = %pin.display(), "inbound steering attached");
        Ok(PodLink {
            _link: link,
            pin,
            netns: spec.netns.clone(),
            ips: spec.ips.clone(),
            exclude_ports: spec.exclude_inbound_ports.clone(),
        })
    }

    /// Stops steering the pod's inbound connections: the link goes first, then its entries.
    pub fn release(&mut self, spec: &CaptureSpec) -> Result<(), EbpfError> {
        let pin = self.pin_path(&spec.key);
        // Dropping the last handle detaches the program (the pin is one of them).
        self.links.remove(&spec.key);
        remove_pin(&pin)?;
        for ip in &spec.ips {
            self.forget_address(*ip)?;
        }
        Ok(())
    }

    /// Drops steering an earlier agent left for pods not in `keep`.
    pub fn retain_only(&mut self, keep: &[&CaptureSpec]) -> Result<(), EbpfError> {
        let pins: Vec<PathBuf> = keep.iter().map(|s| self.pin_path(&s.key)).collect();
        let entries = std::fs::read_dir(&self.pin_dir).map_err(|error| EbpfError::Unpin {
            path: self.pin_dir.clone(),
            error,
        })?;
        for entry in entries.flatten() {
            if !pins.contains(&entry.path()) {
                debug!(pin = %entry.path().display(), "removing inbound steering of a pod that is gone");
                remove_pin(&entry.path())?;
            }
        }
        let kept: Vec<PodIp> = keep
            .iter()
            .flat_map(|s| s.ips.iter().map(|ip| pod_ip(*ip)))
            .collect();
        let stale: Vec<PodIp> = self
            .pods
            .keys()
            .filter_map(Result::ok)
            .filter(|ip| !kept.contains(ip))
            .collect();
        for key in stale {
            self.pods
                .remove(&key)
                .map_err(map_error(map_names::INBOUND_PODS))?;
        }
        Ok(())
    }

    pub fn dump(&self) -> Value {
        let pods: Vec<Value> = self
            .links
            .iter()
            .map(|(key, link)| {
                json!({
                    "pod": key.to_string(),
                    "netns": link.netns,
                    "pin": link.pin,
                    "addresses": link.ips,
                    "excludedPorts": link.exclude_ports,
                })
            })
            .collect();
        json!(pods)
    }

    fn forget_address(&mut self, ip: IpAddr) -> Result<(), EbpfError> {
        let key = pod_ip(ip);
        for (name, result) in [
            (map_names::INBOUND_PODS, self.pods.remove(&key)),
            (map_names::INBOUND_LISTENERS, self.listeners.remove(&key)),
        ] {
            match result {
                Ok(()) => {}
                Err(error) if maps::is_not_found(&error) => {}
                Err(error) => return Err(EbpfError::Map { name, error }),
            }
        }
        Ok(())
    }

    fn pin_path(&self, key: &WorkloadKey) -> PathBuf {
        self.pin_dir.join(pin_name(key))
    }
}

impl Deliveries {
    /// See [`crate::redirect::Redirect::begin_delivery`].
    pub fn begin(&self, from: SocketAddr, to: SocketAddr) -> Result<(), EbpfError> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(delivery_tuple(from, to), 1, 0)
            .map_err(map_error(map_names::DELIVERIES))
    }

    /// See [`crate::redirect::Redirect::end_delivery`].
    pub fn end(&self, from: SocketAddr, to: SocketAddr) {
        // Absent only if it was never written, which begin_delivery reported.
        let _ = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&delivery_tuple(from, to));
    }

    pub fn live(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .count()
    }
}

/// `<namespace>_<name>`, with `%`, `.`, `/` and `_` percent-encoded: bpffs refuses dots in
/// names (reserved for the kernel), and the encoding keeps any two keys apart.
fn pin_name(key: &WorkloadKey) -> String {
    let encode = |s: &str| {
        s.chars()
            .fold(String::with_capacity(s.len()), |mut out, c| {
                match c {
                    '%' | '.' | '/' | '_' => out.push_str(&format!("%{:02x}", c as u32)),
                    c => out.push(c),
                }
                out
            })
    };
    format!("{}_{}", encode(&key.namespace), encode(&key.name))
}

fn remove_pin(pin: &Path) -> Result<(), EbpfError> {
    match std::fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(EbpfError::Unpin {
            path: pin.into(),
            error,
        }),
    }
}

fn map_error(name: &'static str) -> impl Fn(aya::maps::MapError) -> EbpfError {
    move |error| EbpfError::Map { name, error }
}

fn pod_ip(ip: IpAddr) -> PodIp {
    PodIp {
        family: maps::family(ip),
        _pad: 0,
        addr: maps::words(ip),
    }
}

/// The exclusions fit: config validation bounds the list.
fn inbound_pod(exclude_ports: &[u16]) -> InboundPod {
    let mut value = InboundPod::default();
    for (slot, port) in value.excluded_ports.iter_mut().zip(exclude_ports) {
        *slot = *port;
    }
    value.n_excluded_ports = exclude_ports.len().min(MAX_EXCLUDED_PORTS) as u8;
    value
}

/// As sk_lookup sees the delivery: the client's address (the proxy's source) is remote.
fn delivery_tuple(from: SocketAddr, to: SocketAddr) -> ConnTuple {
    ConnTuple::new(
        maps::family(from.ip()),
        maps::words(from.ip()),
        from.port(),
        maps::words(to.ip()),
        to.port(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_have_no_dots_and_stay_apart() {
        let key = |namespace: &str, name: &str| WorkloadKey {
            namespace: namespace.into(),
            name: name.into(),
        };
        assert_eq!(pin_name(&key("shop", "web-1")), "shop_web-1");
        assert_eq!(pin_name(&key("shop", "web.v1")), "shop_web%2ev1");
        assert_ne!(pin_name(&key("a_b", "c")), pin_name(&key("a", "b_c")));
        assert!(!pin_name(&key("../x", "y/z")).contains(['.', '/']));
    }

    #[test]
    fn inbound_exclusions_are_counted() {
        let value = inbound_pod(&[8081, 15021]);
        assert_eq!(value.n_excluded_ports, 2);
        assert_eq!(&value.excluded_ports[..2], &[8081, 15021]);
    }

    #[test]
    fn delivery_tuple_has_the_client_as_source() {
        let t = delivery_tuple(
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:8080".parse().unwrap(),
        );
        assert_eq!((t.src_port, t.dst_port), (40000, 8080));
        assert_eq!(t.src[0].to_ne_bytes(), [10, 0, 0, 1]);
        assert_eq!(t.dst[0].to_ne_bytes(), [10, 0, 0, 2]);
    }
}
