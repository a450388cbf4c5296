//! Lines `/init` prints; the host trusts nothing else.

pub const BOOT: &str = "SLUICE-VM-BOOT";
pub const PROBE_OK: &str = "SLUICE-VM-PROBE-OK";
pub const NOTE: &str = "SLUICE-VM-NOTE";
pub const FEATURE: &str = "SLUICE-VM-FEATURE";
pub const SUITE_BEGIN: &str = "SLUICE-VM-SUITE-BEGIN";
pub const SUITE_END: &str = "SLUICE-VM-SUITE-END";
pub const DONE: &str = "SLUICE-VM-DONE";
