//! The kubeconfig the plugin reads when the agent is away, written from the installer's
//! own service account. The plugin runs on the host, outside any pod, so it has no token of
//! its own; the installer's pod has one, which kubelet rotates, so the file is rewritten
//! whenever the token or the CA changes (each `--watch` tick).
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::json;

use super::{InstallError, files};

/// Where a pod finds its service account's token and the cluster's CA.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The file's name in the conf dir. It ends in none of `.conf`, `.conflist`, `.json`, so no
/// runtime takes it for a network config.
pub const FILE_NAME: &str = "sluice-kubeconfig";

/// A service account's credentials and the API server they are for.
#[derive(Debug)]
pub struct ServiceAccount {
    /// Holds `token` and `ca.crt`.
    pub dir: PathBuf,
    /// `https://host:port`.
    pub server: String,
}

impl ServiceAccount {
    /// The pod's own: `dir` (usually [`SERVICE_ACCOUNT_DIR`]) and the API server from
    /// `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`, which kubelet sets in every
    /// container.
    pub fn in_cluster(dir: PathBuf) -> Result<ServiceAccount, InstallError> {
        let var = |name: &'static str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or(InstallError::NotInCluster(name))
        };
        let host = var("KUBERNETES_SERVICE_HOST")?;
        let port = var("KUBERNETES_SERVICE_PORT")?;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(ServiceAccount {
            dir,
            server: format!("https://{host}:{port}"),
        })
    }

    /// The kubeconfig for the token and CA as they are now (JSON, which kubeconfig readers
    /// take as YAML).
    pub fn render(&self) -> Result<Vec<u8>, InstallError> {
        let token_path = self.dir.join("token");
        let token = String::from_utf8(files::read(&token_path)?)
            .map_err(|_| InstallError::BadToken(token_path.clone()))?;
        let token = token.trim();
        if token.is_empty() {
            return Err(InstallError::BadToken(token_path));
        }
        let ca = files::read(&self.dir.join("ca.crt"))?;
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "cluster", "cluster": {
                "server": self.server,
                "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(ca),
            }}],
            "users": [{"name": "sluice-cni", "user": {"token": token}}],
            "contexts": [{"name": "sluice-cni", "context": {"cluster": "cluster", "user": "sluice-cni"}}],
            "current-context": "sluice-cni",
        });
        let mut bytes = serde_json::to_vec_pretty(&config).expect("a JSON value serializes");
        bytes.push(b'\n');
        Ok(bytes)
    }
}

/// Writes the kubeconfig to `path` (mode 0600: it holds a token) unless it already has
/// these bytes. True when it wrote.
pub fn ensure(path: &Path, account: &ServiceAccount) -> Result<bool, InstallError> {
    let want = account.render()?;
    if files::read_opt(path)?.is_some_and(|have| have == want) {
        return Ok(false);
    }
    files::write_atomic(path, &want, 0o600)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::testutil::Scratch;

    fn account(scratch: &Scratch, token: &str) -> ServiceAccount {
        let dir = scratch.path().join("sa");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("token"), token).unwrap();
        fs::write(dir.join("ca.crt"), "-----BEGIN CERTIFICATE-----\nAA==\n").unwrap();
        ServiceAccount {
            dir,
            server: "https://10.96.0.1:443".into(),
        }
    }

    /// kube-rs, as the plugin reads it, finds the server, the CA and the token.
    #[test]
    fn the_plugin_reads_the_written_kubeconfig() {
        let scratch = Scratch::new("kubeconfig-read");
        let path = scratch.path().join(FILE_NAME);
        assert!(ensure(&path, &account(&scratch, "tok-1\n")).unwrap());
        let config = kube::config::Kubeconfig::read_from(&path).unwrap();
        let cluster = config.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://10.96.0.1:443"));
        let ca = cluster.certificate_authority_data.as_deref().unwrap();
        let ca = base64::engine::general_purpose::STANDARD
            .decode(ca)
            .unwrap();
        assert!(ca.starts_with(b"-----BEGIN CERTIFICATE-----"));
        assert_eq!(config.current_context.as_deref(), Some("sluice-cni"));
        let user = config.auth_infos[0].auth_info.as_ref().unwrap();
        assert!(user.token.is_some(), "no token for kube-rs");
        let raw: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            raw["users"][0]["user"]["token"], "tok-1",
            "the token, trimmed"
        );
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    /// A rotated token is written again; the same one is left alone.
    #[test]
    fn a_rotated_token_is_written_again() {
        let scratch = Scratch::new("kubeconfig-rotate");
        let path = scratch.path().join(FILE_NAME);
        let first = account(&scratch, "tok-1");
        assert!(ensure(&path, &first).unwrap());
        assert!(!ensure(&path, &first).unwrap());
        let rotated = account(&scratch, "tok-2");
        assert!(ensure(&path, &rotated).unwrap());
        assert!(fs::read_to_string(&path).unwrap().contains("tok-2"));
    }

    /// Uninstall takes the written kubeconfig away with our entry.
    #[test]
    fn uninstall_removes_it() {
        let scratch = Scratch::new("kubeconfig-uninstall");
        let path = scratch.path().join(FILE_NAME);
        ensure(&path, &account(&scratch, "tok-1")).unwrap();
        fs::write(
            scratch.path().join("10-bridge.conflist"),
            r#"{"plugins": []}"#,
        )
        .unwrap();
        crate::install::uninstall_chain(scratch.path()).unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn an_empty_token_is_an_error() {
        let scratch = Scratch::new("kubeconfig-empty");
        let err = account(&scratch, " \n").render().unwrap_err();
        assert!(matches!(err, InstallError::BadToken(_)), "{err}");
    }
}
