//! [`Identities`]: one certificate per service account (not per pod: istio/ztunnel#730), the
//! TLS configs that present it, and the roots that peers are checked against.
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use humantime_serde::re::humantime;
use rustls::{ClientConfig, ServerConfig};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::{
    IdentityError, LocalCa, SpiffeId,
    entry::{Entry, issue},
    files::{self, FileSource},
    issued::rfc3339,
    spiffe, tls,
    verify::{PeerVerifier, Trust, WorkloadVerifier},
};
use crate::config::identity::{CertificateSource, IdentitySettings};

pub struct Identities {
    pub(super) trust_domain: String,
    pub(super) source: Source,
    pub(super) trust: Arc<Trust>,
    pub(super) entries: Mutex<HashMap<SpiffeId, Arc<Entry>>>,
    server_configs: Mutex<HashMap<SpiffeId, Arc<ServerConfig>>>,
    client_configs: Mutex<HashMap<(SpiffeId, SpiffeId), Arc<ClientConfig>>>,
    /// Wakes the renewal task when a certificate is added.
    pub(super) wake: Arc<Notify>,
}

pub(super) enum Source {
    Ca {
        ca: Box<LocalCa>,
        dir: PathBuf,
        ttl: Duration,
    },
    Files(FileSource),
}

impl Identities {
    /// Loads the CA or the files (failing on anything missing, unreadable or for another
    /// trust domain) and, inside a tokio runtime, starts the task that renews certificates
    /// (CA mode) or watches the files. Outside a runtime nothing is renewed or re-read.
    pub fn start(settings: &IdentitySettings) -> Result<Arc<Self>, IdentityError> {
        let trust_domain = settings.trust_domain.clone();
        spiffe::validate_trust_domain(&trust_domain)?;
        let mut entries = HashMap::new();
        let (source, roots) = match &settings.source {
            CertificateSource::Ca(ca) => {
                let local = LocalCa::load(&ca.dir, &trust_domain)?;
                let roots = vec![local.certificate().clone()];
                let ttl = ca.certificate_ttl;
                let (ca, dir) = (Box::new(local), ca.dir.clone());
                (Source::Ca { ca, dir, ttl }, roots)
            }
            CertificateSource::Files(config) => {
                let mut by_id = HashMap::new();
                for file in &config.identities {
                    let id = SpiffeId::new(&trust_domain, &file.namespace, &file.service_account);
                    SpiffeId::parse(&id.to_string())?;
                    if by_id.insert(id.clone(), file.clone()).is_some() {
                        return Err(IdentityError::DuplicateIdentity(id));
                    }
                }
                let files = FileSource::new(config.ca_bundle.clone(), by_id);
                // Stamp before reading: a change in between is read again at the next poll.
                let stamp = files.stamp(None);
                let roots = files::load_bundle(&files.ca_bundle)?;
                files.loaded(None, stamp);
                for (id, file) in &files.files {
                    let stamp = files.stamp(Some(id));
                    let (key, current) = files::load_identity(file, id)?;
                    files.loaded(Some(id), stamp);
                    entries.insert(id.clone(), Entry::new(id.clone(), key, current));
                }
                (Source::Files(files), roots)
            }
        };
        let trust = Trust::new(&roots).map_err(|e| IdentityError::Pem {
            path: match &source {
                Source::Ca { dir, .. } => dir.join(super::ca::CA_CERT_FILE),
                Source::Files(files) => files.ca_bundle.clone(),
            },
            reason: format!("not a usable root: {e}"),
        })?;
        let identities = Arc::new(Self {
            trust_domain,
            source,
            trust: Arc::new(trust),
            entries: Mutex::new(entries),
            server_configs: Mutex::default(),
            client_configs: Mutex::default(),
            wake: Arc::new(Notify::new()),
        });
        super::renew::spawn(&identities);
        Ok(identities)
    }

    pub fn id_for(&self, namespace: &str, service_account: &str) -> SpiffeId {
        SpiffeId::new(&self.trust_domain, namespace, service_account)
    }

    /// The tunnel's server side for `local`: TLS 1.3, ALPN `h2`, `local`'s current
    /// certificate, and a mandatory client certificate of our trust domain. Cached per
    /// identity; renewal changes the certificate it presents, not the config.
    pub fn server_config(&self, local: &SpiffeId) -> Result<Arc<ServerConfig>, IdentityError> {
        let mut configs = self
            .server_configs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(config) = configs.get(local) {
            return Ok(config.clone());
        }
        let entry = self.entry(local)?;
        let verifier = WorkloadVerifier::new(self.trust.clone(), &self.trust_domain);
        let config = tls::server_config(entry.slot.clone(), Arc::new(verifier))
            .map(Arc::new)
            .map_err(|source| IdentityError::Tls {
                what: format!("serving as {local}"),
                source,
            })?;
        configs.insert(local.clone(), config.clone());
        Ok(config)
    }

    /// The tunnel's client side from `local` to `peer`: TLS 1.3, ALPN `h2`, `local`'s
    /// current certificate, and a server that must be exactly `peer` (the server name given
    /// to `connect` is not checked). Cached per pair.
    pub fn client_config(
        &self,
        local: &SpiffeId,
        peer: &SpiffeId,
    ) -> Result<Arc<ClientConfig>, IdentityError> {
        let key = (local.clone(), peer.clone());
        let mut configs = self
            .client_configs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(config) = configs.get(&key) {
            return Ok(config.clone());
        }
        let entry = self.entry(local)?;
        let verifier = PeerVerifier::new(self.trust.clone(), peer.clone());
        let config = tls::client_config(entry.slot.clone(), Arc::new(verifier))
            .map(Arc::new)
            .map_err(|source| IdentityError::Tls {
                what: format!("{local} dialling {peer}"),
                source,
            })?;
        configs.insert(key, config.clone());
        Ok(config)
    }

    /// The certificate entry of `id`: issued now on first use (CA mode), or the configured
    /// files' (files mode).
    fn entry(&self, id: &SpiffeId) -> Result<Arc<Entry>, IdentityError> {
        if id.trust_domain() != self.trust_domain {
            return Err(IdentityError::ForeignIdentity {
                id: id.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = entries.get(id) {
            return Ok(entry.clone());
        }
        let Source::Ca { ca, ttl, .. } = &self.source else {
            return Err(IdentityError::NoIdentityFile(id.clone()));
        };
        let (key, current) = issue(ca, id, *ttl)?;
        tracing::info!(
            %id, serial = %current.serial, not_after = %rfc3339(current.not_after),
            "issued a workload certificate"
        );
        let entry = Entry::new(id.clone(), key, current);
        entries.insert(id.clone(), entry.clone());
        self.wake.notify_one();
        Ok(entry)
    }

    /// What `/config_dump` shows: the source and every certificate in use, never a key.
    pub fn dump(&self) -> Value {
        let mut entries: Vec<Arc<Entry>> = self.entries().into_iter().collect();
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        let identities: Vec<Value> = entries
            .iter()
            .map(|entry| {
                let current = entry.current();
                let mut dump = json!({
                    "id": entry.id.to_string(),
                    "serial": current.serial,
                    "notBefore": rfc3339(current.not_before),
                    "notAfter": rfc3339(current.not_after),
                });
                if let Source::Files(files) = &self.source
                    && let Some(error) = files.last_error(Some(&entry.id))
                {
                    dump["reloadError"] = error.into();
                }
                dump
            })
            .collect();
        let mut dump = json!({ "trustDomain": self.trust_domain, "identities": identities });
        match &self.source {
            Source::Ca { dir, ttl, .. } => {
                dump["source"] = "ca".into();
                dump["dir"] = dir.display().to_string().into();
                dump["certificateTtl"] = humantime::format_duration(*ttl).to_string().into();
            }
            Source::Files(files) => {
                dump["source"] = "files".into();
                dump["caBundle"] = files.ca_bundle.display().to_string().into();
                if let Some(error) = files.last_error(None) {
                    dump["caBundleReloadError"] = error.into();
                }
            }
        }
        dump
    }

    pub(super) fn entries(&self) -> Vec<Arc<Entry>> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.values().cloned().collect()
    }
}
