//! The contract between `sluice-cni` (the chained CNI plugin a container runtime runs for
//! each new pod) and the node agent: which pods the mesh captures, and what the two say to
//! each other over the agent's Unix socket.
pub mod enrollment;
pub mod protocol;

#[cfg(test)]
mod testutil;
