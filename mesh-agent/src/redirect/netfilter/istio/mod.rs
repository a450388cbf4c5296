//! istio-iptables compatible rule renderer (`--profile istio-sidecar`).
//!
//! Given istio-iptables's own flags, prints what upstream `istio-iptables` would apply:
//! the `iptables-restore --noflush` payloads (IPv4, then IPv6 when enabled), the
//! `istio-nftables` transaction, or with `--cleanup-only` the undo commands. Inputs that
//! upstream reads from the pod's environment (pod IP family, resolv.conf, env vars) are
//! explicit flags, so the output is a pure function of the arguments.
//!
//! Layout: `args` (flags) -> `settings`, `cidr` (validated inputs) -> `iptables`, `nft`,
//! `dns` (which rules, in upstream order) -> `rules`, `cleanup`, `nft_tx` (text).

mod args;
mod cidr;
mod cleanup;
mod dns;
mod error;
mod iptables;
mod nft;
mod nft_tx;
mod rules;
mod settings;

#[cfg(test)]
mod tests_iptables;
#[cfg(test)]
mod tests_nft;

pub use args::IstioArgs;
pub use error::IstioRenderError;

use settings::Settings;

/// Which ruleset flavour to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IstioBackend {
    /// `iptables-restore` payloads (or `iptables`/`ip6tables` undo commands).
    #[default]
    Iptables,
    /// One `nft -f` transaction, as `istio-iptables --native-nftables` builds it.
    Nft,
}

/// Render the ruleset istio-iptables would apply for `args`, as text (lines joined by
/// `\n`, with a trailing newline when not empty).
pub fn render(args: &IstioArgs, backend: IstioBackend) -> Result<String, IstioRenderError> {
    let settings = Settings::from_args(args)?;
    Ok(match backend {
        IstioBackend::Iptables => {
            let plan = iptables::plan(&settings);
            if settings.cleanup_only {
                cleanup::render_undo(&plan)
            } else {
                plan.render_restore()
            }
        }
        IstioBackend::Nft => {
            let plan = nft::plan(&settings);
            if settings.cleanup_only {
                nft_tx::render_cleanup()
            } else {
                nft_tx::render(&plan)
            }
        }
    })
}
