//! The network config the runtime passes on stdin: the spec's keys and Sluice's own.
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::error::{CniError, code};
use crate::protocol::DEFAULT_SOCKET;

/// Versions whose result format this plugin passes through (`ips[].address` exists since
/// 0.3.0). The newest is what VERSION reports.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The version this plugin speaks natively.
pub const CURRENT_VERSION: &str = "1.1.0";
/// How long ADD waits for the agent unless `timeout` says otherwise: long enough for an
/// agent that is attaching programs on a busy node, short of the kubelet's own patience.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    cni_version: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    prev_result: Option<Value>,
    #[serde(default)]
    agent_socket: Option<PathBuf>,
    #[serde(default)]
    timeout: Option<Value>,
    #[serde(default)]
    kubeconfig: Option<PathBuf>,
    #[serde(default)]
    log_level: Option<String>,
    #[serde(default)]
    log_file: Option<PathBuf>,
}

/// How much the plugin logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

/// The parsed network config.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    /// The previous plugin's result: what ADD prints back, and where the pod's IPs come from.
    pub prev_result: Option<Value>,
    pub agent_socket: PathBuf,
    pub timeout: Duration,
    /// Used only when the agent is away, to decide by the label rule.
    pub kubeconfig: Option<PathBuf>,
    pub log_level: LogLevel,
    /// Logs go here (appended) instead of stderr.
    pub log_file: Option<PathBuf>,
}

/// The version a config declares: the spec reads a missing `cniVersion` as 0.1.0. `None`
/// when stdin is not a JSON object (the caller reports that properly).
pub fn declared_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    let obj = v.as_object()?;
    Some(
        obj.get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.1.0")
            .to_owned(),
    )
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let raw: Raw = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE,
                "the network config is not valid JSON",
                e.to_string(),
            )
        })?;
        let cni_version = raw.cni_version.unwrap_or_else(|| "0.1.0".into());
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                "incompatible CNI versions",
                format!(
                    "config is {cni_version:?}, sluice-cni supports {}",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        let timeout = match raw.timeout {
            None | Some(Value::Null) => DEFAULT_TIMEOUT,
            Some(v) => parse_timeout(&v)?,
        };
        let log_level = match raw
            .log_level
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("info") => LogLevel::Info,
            Some("error") => LogLevel::Error,
            Some("warn") | Some("warning") => LogLevel::Warn,
            Some("debug") => LogLevel::Debug,
            Some(other) => {
                return Err(invalid(
                    "logLevel",
                    other,
                    "one of error, warn, info, debug",
                ));
            }
        };
        Ok(NetConf {
            cni_version,
            name: raw.name.unwrap_or_default(),
            prev_result: raw.prev_result.filter(|v| !v.is_null()),
            agent_socket: raw
                .agent_socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            timeout,
            kubeconfig: raw.kubeconfig.filter(|p| !p.as_os_str().is_empty()),
            log_level,
            log_file: raw.log_file.filter(|p| !p.as_os_str().is_empty()),
        })
    }

    /// The version check CHECK (0.4.0+) and GC / STATUS (1.1.0+) need on top of parsing.
    pub fn at_least(&self, min: &str) -> bool {
        version_key(&self.cni_version) >= version_key(min)
    }
}

fn version_key(v: &str) -> Vec<u32> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// `"30s"`, `"1m 30s"` (the agent's duration spelling) or a number of seconds.
fn parse_timeout(v: &Value) -> Result<Duration, CniError> {
    let parsed = match v {
        Value::String(s) => humantime::parse_duration(s).ok(),
        Value::Number(n) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .and_then(|s| Duration::try_from_secs_f64(s).ok()),
        _ => None,
    };
    match parsed {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(invalid(
            "timeout",
            &v.to_string(),
            "a positive duration such as \"30s\", or seconds",
        )),
    }
}

fn invalid(key: &str, value: &str, want: &str) -> CniError {
    CniError::new(
        code::INVALID_CONFIG,
        format!("invalid {key} in the network config"),
        format!("{key} is {value}; expected {want}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_our_keys() {
        let conf =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"k8s","type":"sluice-cni"}"#).unwrap();
        assert_eq!(conf.agent_socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(conf.timeout, DEFAULT_TIMEOUT);
        assert_eq!((conf.kubeconfig, conf.prev_result), (None, None));
        assert_eq!(conf.log_level, LogLevel::Info);

        let conf = NetConf::parse(
            br#"{"cniVersion":"0.3.1","name":"k8s","type":"sluice-cni","agentSocket":"/run/a.sock",
                "timeout":"1m 5s","kubeconfig":"/etc/k","logLevel":"DEBUG","prevResult":{"ips":[]}}"#,
        )
        .unwrap();
        assert_eq!(conf.agent_socket, PathBuf::from("/run/a.sock"));
        assert_eq!(conf.timeout, Duration::from_secs(65));
        assert_eq!(conf.kubeconfig, Some(PathBuf::from("/etc/k")));
        assert_eq!(conf.log_level, LogLevel::Debug);
        assert!(conf.prev_result.is_some());
        assert!(!conf.at_least("0.4.0"));

        let conf = NetConf::parse(br#"{"cniVersion":"1.1.0","timeout":2.5}"#).unwrap();
        assert_eq!(conf.timeout, Duration::from_millis(2500));
        assert!(conf.at_least("1.1.0"));
    }

    #[test]
    fn bad_configs_get_the_specs_codes() {
        let code_of = |s: &[u8]| NetConf::parse(s).unwrap_err().code;
        assert_eq!(code_of(b"{not json"), code::DECODE);
        assert_eq!(
            code_of(br#"{"cniVersion":"0.2.0"}"#),
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(code_of(br#"{}"#), code::INCOMPATIBLE_VERSION);
        assert_eq!(
            code_of(br#"{"cniVersion":"1.0.0","timeout":"soon"}"#),
            code::INVALID_CONFIG
        );
        assert_eq!(
            code_of(br#"{"cniVersion":"1.0.0","timeout":0}"#),
            code::INVALID_CONFIG
        );
        assert_eq!(
            code_of(br#"{"cniVersion":"1.0.0","logLevel":"loud"}"#),
            code::INVALID_CONFIG
        );
        assert_eq!(
            declared_version(br#"{"name":"x"}"#).as_deref(),
            Some("0.1.0")
        );
        assert_eq!(declared_version(b"[]"), None);
    }
}
