//! The contract between `sluice-cni` and the node agent.
