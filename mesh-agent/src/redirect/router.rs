//! Sends each pod to the redirect mode it uses: the node's, or its own override. The router
//! is not a mode itself: it dispatches to the [`Redirect`] of each mode running here.
use std::{
    collections::BTreeMap,
    net::{Ipv6Addr, SocketAddr},
    sync::Arc,
};

use super::{CaptureSpec, InboundSockets, Redirect, RedirectError, RedirectMode};
use crate::config::WorkloadKey;

pub struct Router {
    node_mode: RedirectMode,
    modes: BTreeMap<RedirectMode, Arc<dyn Redirect>>,
}

impl Router {
    /// `modes` holds every mode this node runs; `node_mode` must be one of them.
    pub fn new(node_mode: RedirectMode, modes: BTreeMap<RedirectMode, Arc<dyn Redirect>>) -> Self {
        Self { node_mode, modes }
    }

    pub fn node_mode(&self) -> RedirectMode {
        self.node_mode
    }

    /// The modes running here.
    pub fn modes(&self) -> impl Iterator<Item = RedirectMode> + '_ {
        self.modes.keys().copied()
    }

    /// One mode's debugging view, when it runs here.
    pub fn mode_dump(&self, mode: RedirectMode) -> Option<serde_json::Value> {
        self.modes.get(&mode).map(|m| m.debug_dump())
    }

    fn get(&self, mode: RedirectMode) -> Result<&Arc<dyn Redirect>, RedirectError> {
        self.modes
            .get(&mode)
            .ok_or(RedirectError::ModeNotRunning(mode))
    }

    /// See [`Redirect::listeners`], in the pod's `mode`.
    pub fn listeners(
        &self,
        key: &WorkloadKey,
        mode: RedirectMode,
        ipv6: Option<Ipv6Addr>,
    ) -> Result<Vec<SocketAddr>, RedirectError> {
        self.get(mode)?.listeners(key, ipv6)
    }

    /// See [`Redirect::enroll`], in the spec's mode.
    pub fn enroll(
        &self,
        spec: &CaptureSpec,
        inbound: &InboundSockets<'_>,
    ) -> Result<(), RedirectError> {
        self.get(spec.mode)?.enroll(spec, inbound)
    }

    /// See [`Redirect::begin_delivery`], in `mode`.
    pub fn begin_delivery(
        &self,
        mode: RedirectMode,
        from: SocketAddr,
        to: SocketAddr,
    ) -> Result<(), RedirectError> {
        self.get(mode)?.begin_delivery(from, to)
    }

    /// See [`Redirect::end_delivery`], in `mode`.
    pub fn end_delivery(&self, mode: RedirectMode, from: SocketAddr, to: SocketAddr) {
        if let Ok(redirect) = self.get(mode) {
            redirect.end_delivery(from, to);
        }
    }

    /// See [`Redirect::release`], in the spec's mode.
    pub fn release(&self, spec: &CaptureSpec) -> Result<(), RedirectError> {
        self.get(spec.mode)?.release(spec)
    }

    /// See [`Redirect::retain_only`]: each mode keeps its own pods of `keep`.
    pub fn retain_only(&self, keep: &[&CaptureSpec]) -> Result<(), RedirectError> {
        for (mode, redirect) in &self.modes {
            let mine: Vec<&CaptureSpec> =
                keep.iter().copied().filter(|s| s.mode == *mode).collect();
            redirect.retain_only(&mine)?;
        }
        Ok(())
    }

    /// Every running mode's counters.
    pub fn counters(&self) -> Vec<(String, u64)> {
        self.modes.values().flat_map(|m| m.counters()).collect()
    }

    /// Every running mode's debugging view.
    pub fn debug_dump(&self) -> serde_json::Value {
        serde_json::json!({
            "nodeMode": self.node_mode,
            "modes": self
                .modes
                .iter()
                .map(|(mode, m)| (mode.as_str(), m.debug_dump()))
                .collect::<BTreeMap<_, _>>(),
        })
    }
}
