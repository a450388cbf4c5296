//! The contract between `sluice-cni` (the chained CNI plugin a container runtime runs for
//! each new pod) and the node agent: which pods the mesh captures, and what the two say to
//! each other over the agent's Unix socket. With the default `plugin` feature, also the
//! plugin itself and its installer (the `sluice-cni` binary is a thin shell over them).
pub mod enrollment;
pub mod protocol;

#[cfg(feature = "plugin")]
pub mod install;
#[cfg(feature = "plugin")]
pub mod plugin;

#[cfg(test)]
mod testutil;

/// An error and its causes on one line, `a: b: c`: what a CNI error's `details` and a log
/// line can carry.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
