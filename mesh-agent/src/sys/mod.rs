//! Thin wrappers over the host facts and syscalls the agent needs: mounts, cgroups, netns.
pub mod addrs;
pub mod exec;
pub mod kubepods;
pub mod limits;
pub mod memory;
pub mod mounts;
pub mod netns;
