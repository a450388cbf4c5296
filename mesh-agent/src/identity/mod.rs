//! Workload identities for the mesh's mTLS tunnel (HBONE: TLS 1.3, ALPN h2).
//!
//! Each service account gets a SPIFFE ID and a short-lived certificate, issued by the node's
//! local CA (`mesh-agent ca init`) or read from the operator's files; [`Identities`] hands
//! the proxy rustls configs that present them and check the peer's. rustls checks chains
//! but not URI SANs, so the SPIFFE ID checks are ours ([`verify`]).
pub mod ca;
mod entry;
mod error;
pub mod failure;
mod files;
mod issued;
mod pemfile;
mod renew;
pub mod spiffe;
mod store;
mod tls;
mod trust;
pub mod verify;

#[cfg(test)]
mod forged_tests;
#[cfg(test)]
mod handshake_tests;
#[cfg(test)]
mod store_tests;

pub use ca::LocalCa;
pub use error::IdentityError;
pub use failure::HandshakeFailure;
pub use issued::IssuedCert;
pub use spiffe::SpiffeId;
pub use store::Identities;
pub use verify::peer_id;
