//! eBPF steering: loads `mesh-ebpf`, attaches it with bpf_link in multi mode (so it
//! coexists with other cgroup programs), pins maps and links under
//! `<bpffsRoot>/<node>/{maps,links}` so steering survives an agent restart, and keeps the
//! enrollment map in step with the enrolled pods.
mod attach;
mod inbound;
mod listeners;
mod maps;
pub mod probe;

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray},
    programs::links::FdLink,
};
use mesh_common::{ConnTuple, OrigDst, PodCapture, maps as map_names};
use tracing::info;

use self::{
    inbound::{Deliveries, InboundSteering},
    listeners::ListenerAddrs,
};
use super::{CaptureSpec, InboundSockets, Redirect, RedirectError};
use crate::{config::WorkloadKey, sys::mounts};

/// The compiled programs, built by this crate's build script.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mesh-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    #[error("creating pin directory {path}: {error}")]
    PinDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("loading the eBPF object")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {error}")]
    Program {
        name: &'static str,
        error: aya::programs::ProgramError,
    },
    #[error("link of {name}: {error}")]
    Link {
        name: &'static str,
        error: aya::programs::links::LinkError,
    },
    #[error("map {name}: {error}")]
    Map {
        name: &'static str,
        error: aya::maps::MapError,
    },
    #[error("opening cgroup {path}: {error}")]
    Cgroup {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("pinning link {path}: {error}")]
    Pin {
        path: PathBuf,
        error: aya::pin::PinError,
    },
    #[error("opening netns {path}: {error}")]
    Netns {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("no inbound listener of the family of pod address {ip}")]
    NoInboundListener { ip: IpAddr },
    #[error("no free loopback listener address left on this node")]
    ListenerAddressesExhausted,
    #[error("removing pins under {path}: {error}")]
    Unpin {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Where to attach and pin.
#[derive(Clone, Debug)]
pub struct EbpfSettings {
    pub node: String,
    pub cgroup_root: PathBuf,
    pub bpffs_root: PathBuf,
}

impl EbpfSettings {
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs_root.join(&self.node)
    }
}

pub struct EbpfRedirect {
    settings: EbpfSettings,
    addrs: Mutex<ListenerAddrs>,
    enrolled: Mutex<HashMap<MapData, u64, PodCapture>>,
    orig_by_tuple: HashMap<MapData, ConnTuple, OrigDst>,
    orig_by_cookie: HashMap<MapData, u64, OrigDst>,
    counters: PerCpuArray<MapData, u64>,
    /// Per-pod inbound steering, with the loaded object it attaches from.
    inbound: Mutex<(InboundSteering, Ebpf)>,
    deliveries: Deliveries,
    /// Keeps the programs attached while the agent runs (they are also pinned).
    _links: Vec<FdLink>,
}

impl EbpfRedirect {
    /// Loads and attaches the programs, reusing pinned maps a previous agent left, and
    /// replaces that agent's pinned links with ours.
    pub fn start(settings: EbpfSettings) -> Result<Self, EbpfError> {
        let pin_dir = settings.pin_dir();
        mounts::ensure_bpffs(&pin_dir)?;
        for dir in [pin_dir.join("maps"), pin_dir.join("links")] {
            std::fs::create_dir_all(&dir).map_err(|error| EbpfError::PinDir {
                path: dir.clone(),
                error,
            })?;
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir.join("maps"))
            .load(PROGRAMS)?;
        let links = attach::attach_all(&mut ebpf, &settings)?;
        let (inbound, deliveries) = InboundSteering::load(&mut ebpf, pin_dir.join("inbound"))?;
        let enrolled = maps::take(&mut ebpf, map_names::ENROLLED)?;
        let orig_by_tuple = maps::take(&mut ebpf, map_names::ORIG_BY_TUPLE)?;
        let orig_by_cookie = maps::take(&mut ebpf, map_names::ORIG_BY_COOKIE)?;
        let counters = maps::take(&mut ebpf, map_names::COUNTERS)?;
        info!(pins = %pin_dir.display(), cgroup_root = %settings.cgroup_root.display(), "eBPF steering attached");
        Ok(Self {
            settings,
            addrs: Mutex::default(),
            enrolled: Mutex::new(enrolled),
            orig_by_tuple,
            orig_by_cookie,
            counters,
            inbound: Mutex::new((inbound, ebpf)),
            deliveries,
            _links: links,
        })
    }
}

/// Detaches everything a node's agent attached and removes its pins: with the pins gone and
/// no process holding the links, the kernel detaches the programs and frees the maps.
pub fn cleanup(pin_dir: &Path) -> Result<bool, EbpfError> {
    if !pin_dir.exists() {
        return Ok(false);
    }
    std::fs::remove_dir_all(pin_dir).map_err(|error| EbpfError::Unpin {
        path: pin_dir.into(),
        error,
    })?;
    // The shared root goes too once no other node's agent pins under it; a non-empty root
    // fails to remove, which is exactly the case to leave alone.
    if let Some(root) = pin_dir.parent() {
        let _ = std::fs::remove_dir(root);
    }
    Ok(true)
}

impl Redirect for EbpfRedirect {
    /// `127.0.1.N:15001` (unique on the node) and, with IPv6, `[pod IPv6]:15001` (unique
    /// too): the connect programs rewrite to these.
    fn listeners(
        &self,
        key: &WorkloadKey,
        ipv6: Option<Ipv6Addr>,
    ) -> Result<Vec<SocketAddr>, RedirectError> {
        let port = mesh_common::OUTBOUND_LISTENER_PORT;
        let v4 = self
            .addrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .assign(key)
            .ok_or(EbpfError::ListenerAddressesExhausted)?;
        let mut listeners = vec![SocketAddr::from((v4, port))];
        listeners.extend(ipv6.map(|v6| SocketAddr::from((v6, port))));
        Ok(listeners)
    }

    fn enroll(
        &self,
        spec: &CaptureSpec,
        inbound: &InboundSockets<'_>,
    ) -> Result<(), RedirectError> {
        let id = mounts::cgroup_id(&spec.cgroup).map_err(EbpfError::from)?;
        let value = maps::pod_capture(spec);
        let mut map = self.enrolled.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(id, value, 0).map_err(|error| EbpfError::Map {
            name: map_names::ENROLLED,
            error,
        })?;
        let mut guard = self.inbound.lock().unwrap_or_else(|p| p.into_inner());
        let (steering, ebpf) = &mut *guard;
        steering.enroll(ebpf, spec, inbound)?;
        Ok(())
    }

    fn release(&self, spec: &CaptureSpec) -> Result<(), RedirectError> {
        self.inbound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .release(spec)?;
        self.addrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .free(&spec.key);
        let id = mounts::cgroup_id(&spec.cgroup).map_err(EbpfError::from)?;
        let mut map = self.enrolled.lock().unwrap_or_else(|p| p.into_inner());
        match map.remove(&id) {
            Ok(()) => Ok(()),
            // Never enrolled (e.g. its listeners failed to open): nothing to stop.
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(error) => Err(EbpfError::Map {
                name: map_names::ENROLLED,
                error,
            }
            .into()),
        }
    }

    fn retain_only(&self, keep: &[&CaptureSpec]) -> Result<(), RedirectError> {
        self.inbound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .retain_only(keep)?;
        let keep: Vec<u64> = keep
            .iter()
            .map(|spec| mounts::cgroup_id(&spec.cgroup))
            .collect::<Result<_, _>>()
            .map_err(EbpfError::from)?;
        let mut map = self.enrolled.lock().unwrap_or_else(|p| p.into_inner());
        let stale: Vec<u64> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|id| !keep.contains(id))
            .collect();
        for id in stale {
            map.remove(&id).map_err(|error| EbpfError::Map {
                name: map_names::ENROLLED,
                error,
            })?;
        }
        Ok(())
    }

    fn begin_delivery(&self, from: SocketAddr, to: SocketAddr) -> Result<(), RedirectError> {
        Ok(self.deliveries.begin(from, to)?)
    }

    fn end_delivery(&self, from: SocketAddr, to: SocketAddr) {
        self.deliveries.end(from, to);
    }

    fn counters(&self) -> Vec<(String, u64)> {
        maps::read_counters(&self.counters)
            .into_iter()
            .map(|(name, value)| (format!("ebpf_{name}"), value))
            .collect()
    }

    fn debug_dump(&self) -> serde_json::Value {
        let enrolled = {
            let map = self.enrolled.lock().unwrap_or_else(|p| p.into_inner());
            maps::dump_enrolled(&map)
        };
        let inbound = self
            .inbound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .dump();
        serde_json::json!({
            "mode": "ebpf",
            "pins": self.settings.pin_dir(),
            "cgroupRoot": self.settings.cgroup_root,
            "counters": maps::read_counters(&self.counters)
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>(),
            "enrolled": enrolled,
            "origDstByTuple": maps::dump_tuples(&self.orig_by_tuple),
            "origDstByCookieEntries": self.orig_by_cookie.keys().count(),
            "inbound": inbound,
            "liveDeliveries": self.deliveries.live(),
        })
    }
}
