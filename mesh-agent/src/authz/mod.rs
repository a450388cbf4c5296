//! Inbound authorization: policy evaluation (being written).
