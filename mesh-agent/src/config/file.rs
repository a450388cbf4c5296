//! Configuration from a YAML file, polled for changes.
//!
//! Polling the content (not inotify) is deliberate: Kubernetes ConfigMap volumes update by
//! swapping a symlink, which a watch on the file misses, and a one-second poll of a small
//! file costs nothing.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::sync::watch;
use tracing::{error, info};

use super::{Config, ConfigError, ConfigSource};

const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Called with each refused version, so the caller can count or surface it.
pub type OnRejection = Box<dyn Fn(&ConfigError) + Send + Sync>;

pub struct FileSource {
    path: PathBuf,
    on_rejection: OnRejection,
}

impl FileSource {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            on_rejection: Box::new(|_| {}),
        }
    }

    pub fn on_rejection(mut self, hook: impl Fn(&ConfigError) + Send + Sync + 'static) -> Self {
        self.on_rejection = Box::new(hook);
        self
    }

    /// Reads and validates the file once.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        parse(path, &text)
    }
}

/// Whether the file has a `kubernetes:` section (and so takes its lists from the API).
pub fn names_kubernetes(path: &Path) -> Result<bool, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_owned(),
        error,
    })?;
    let value: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    Ok(value.get("kubernetes").is_some())
}

/// Parses YAML text; errors name the field path and the line.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let field = err.path().to_string();
        let message = without_yaml_path(&field, &err.into_inner().to_string());
        ConfigError::Invalid {
            path: path.to_owned(),
            message: if field == "." {
                message
            } else {
                format!("{field}: {message}")
            },
        }
    })
}

/// The YAML parser prefixes its own, coarser path (no list indexes) to some messages; the
/// exact path from `serde_path_to_error` replaces it.
fn without_yaml_path(field: &str, message: &str) -> String {
    match message.split_once(": ") {
        Some((head, rest)) if !head.contains(' ') && field.starts_with(head) => rest.to_owned(),
        _ => message.to_owned(),
    }
}

impl ConfigSource for FileSource {
    async fn subscribe(self) -> Result<watch::Receiver<Arc<Config>>, ConfigError> {
        let text = std::fs::read_to_string(&self.path).map_err(|error| ConfigError::Read {
            path: self.path.clone(),
            error,
        })?;
        let initial = parse(&self.path, &text)?;
        let (tx, rx) = watch::channel(Arc::new(initial));
        tokio::spawn(poll(self.path, text, tx, self.on_rejection));
        Ok(rx)
    }
}

async fn poll(
    path: PathBuf,
    mut last_text: String,
    tx: watch::Sender<Arc<Config>>,
    on_rejection: OnRejection,
) {
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    loop {
        ticker.tick().await;
        if tx.is_closed() {
            return;
        }
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(text) => text,
            Err(err) => {
                if last_text.is_empty() {
                    continue;
                }
                error!(path = %path.display(), %err, "config file unreadable; keeping the current config");
                last_text.clear();
                continue;
            }
        };
        if text == last_text {
            continue;
        }
        last_text = text;
        match parse(&path, &last_text) {
            Ok(config) => {
                info!(path = %path.display(), "config changed; applying");
                tx.send_replace(Arc::new(config));
            }
            Err(err) => {
                error!(%err, "config rejected; keeping the current config");
                on_rejection(&err);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Config, String> {
        parse(Path::new("test.yaml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let cfg = parse_str("node: n1\n").unwrap();
        assert_eq!(cfg.node, "n1");
        assert_eq!(cfg.metrics_address.port(), 15020);
        assert_eq!(cfg.admin_address.to_string(), "127.0.0.1:15000");
        assert_eq!(cfg.proxy.connect_timeout, Duration::from_secs(5));
        assert_eq!(cfg.proc_sys_net, Path::new("/proc/sys/net"));
        assert!(cfg.workloads.is_empty());
    }

    #[test]
    fn unknown_field_names_field_and_line() {
        let err =
            parse_str("node: n1\nworkloads:\n  - name: a\n    enrolled: false\n    ipz: []\n")
                .unwrap_err();
        assert!(err.contains("workloads[0]"), "{err}");
        assert!(err.contains("ipz"), "{err}");
        assert!(err.contains("line 5"), "{err}");
    }

    #[test]
    fn bad_value_names_field_and_line() {
        let err = parse_str(
            "node: n1\nworkloads:\n  - name: a\n    enrolled: false\n    excludePorts: [70000]\n",
        )
        .unwrap_err();
        assert!(err.contains("workloads[0].excludePorts"), "{err}");
        assert!(err.contains("line 5"), "{err}");
    }

    #[test]
    fn enrolled_workload_needs_existing_netns() {
        let err = parse_str(
            "node: n1\nworkloads:\n  - name: a\n    netns: /nonexistent/ns\n    cgroup: /sys\n",
        )
        .unwrap_err();
        assert!(err.contains("netns"), "{err}");
        assert!(err.contains("/nonexistent/ns"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn duplicate_workloads_are_refused() {
        let err = parse_str(
            "node: n1\nworkloads:\n  - {name: a, enrolled: false}\n  - {name: a, enrolled: false}\n",
        )
        .unwrap_err();
        assert!(err.contains("default/a is listed twice"), "{err}");
    }

    #[test]
    fn node_name_must_be_a_path_component() {
        assert!(parse_str("node: ../x\n").unwrap_err().contains("node"));
    }
}
