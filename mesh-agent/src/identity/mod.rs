//! Workload identities: SPIFFE IDs, certificates, TLS configs (being written).
