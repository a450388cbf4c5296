//! Workload identities for the mesh's mTLS tunnel (HBONE: TLS 1.3, ALPN h2).
//!
//! Each service account gets a SPIFFE ID and a short-lived certificate, issued by the node's
//! local CA (`mesh-agent ca init`). rustls checks chains but not URI SANs, so the SPIFFE ID
//! checks are ours ([`verify`]).
pub mod ca;
mod error;
pub mod failure;
mod issued;
mod pemfile;
pub mod spiffe;
mod tls;
mod trust;
pub mod verify;

#[cfg(test)]
mod forged_tests;
#[cfg(test)]
mod handshake_tests;

pub use ca::LocalCa;
pub use error::IdentityError;
pub use failure::HandshakeFailure;
pub use issued::IssuedCert;
pub use spiffe::SpiffeId;
pub use verify::peer_id;
