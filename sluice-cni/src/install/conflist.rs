//! The JSON side of chaining: where our entry goes in a plugin list, how a single-plugin
//! `.conf` becomes a list, and how to take our entry out again. Pure functions over
//! `serde_json::Value`, so every case is a unit test.
use serde_json::{Value, json};

use super::PLUGIN_TYPE;

/// Is this plugin object ours?
pub fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

fn plugins(list: &Value) -> Result<&Vec<Value>, String> {
    list.get("plugins")
        .and_then(Value::as_array)
        .ok_or_else(|| "a .conflist needs a \"plugins\" array".to_owned())
}

/// `list` with `entry` as its last plugin and no other entry of ours; `None` when it already
/// is exactly that, so an unchanged file is never rewritten.
pub fn chain(list: &Value, entry: &Value) -> Result<Option<Value>, String> {
    let current = plugins(list)?;
    let mut wanted: Vec<Value> = current.iter().filter(|p| !is_ours(p)).cloned().collect();
    if wanted.is_empty() {
        return Err("the plugin list has no plugin to chain after".into());
    }
    wanted.push(entry.clone());
    if *current == wanted {
        return Ok(None);
    }
    let mut out = list.clone();
    out["plugins"] = Value::Array(wanted);
    Ok(Some(out))
}

/// A single-plugin config as the runtime itself reads it into a list (libcni's
/// `ConfListFromConf`: the list takes the config's `name` and `cniVersion`, and the whole
/// object is its one plugin).
pub fn as_list(conf: &Value) -> Result<Value, String> {
    let obj = conf.as_object().ok_or("a .conf must be a JSON object")?;
    if obj
        .get("type")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err("a .conf needs a \"type\"".into());
    }
    if is_ours(conf) {
        return Err("the node's first CNI config is sluice-cni itself".into());
    }
    Ok(json!({
        "cniVersion": obj.get("cniVersion").cloned().unwrap_or(Value::Null),
        "name": obj.get("name").cloned().unwrap_or(Value::Null),
        "plugins": [conf],
    }))
}

/// `list` without our entries; `None` when it has none.
pub fn strip(list: &Value) -> Option<Value> {
    let current = plugins(list).ok()?;
    if !current.iter().any(is_ours) {
        return None;
    }
    let mut out = list.clone();
    out["plugins"] = Value::Array(current.iter().filter(|p| !is_ours(p)).cloned().collect());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> Value {
        json!({"type": "sluice-cni", "agentSocket": "/var/run/sluice/cni.sock"})
    }

    #[test]
    fn our_entry_goes_last_once() {
        let list = json!({"cniVersion": "1.0.0", "name": "k8s", "plugins": [
            {"type": "bridge"}, {"type": "portmap"}]});
        let chained = chain(&list, &ours()).unwrap().unwrap();
        assert_eq!(chained["plugins"][2], ours());
        assert_eq!(chain(&chained, &ours()).unwrap(), None, "idempotent");

        // Not last any more (another plugin appended after us), or stale settings: fixed.
        let moved = json!({"plugins": [{"type": "bridge"}, ours(), {"type": "bandwidth"}]});
        let fixed = chain(&moved, &ours()).unwrap().unwrap();
        assert_eq!(fixed["plugins"].as_array().unwrap().len(), 3);
        assert_eq!(fixed["plugins"][2], ours());
        let newer = json!({"type": "sluice-cni", "agentSocket": "/run/other.sock"});
        assert_eq!(chain(&fixed, &newer).unwrap().unwrap()["plugins"][2], newer);

        assert_eq!(
            strip(&fixed).unwrap()["plugins"],
            json!([{"type": "bridge"}, {"type": "bandwidth"}])
        );
        assert_eq!(strip(&list), None);
        assert!(chain(&json!({"plugins": []}), &ours()).is_err());
        assert!(chain(&json!({"type": "bridge"}), &ours()).is_err());
    }

    #[test]
    fn a_conf_becomes_the_list_the_runtime_would_read() {
        let conf =
            json!({"cniVersion": "0.4.0", "name": "bridge", "type": "bridge", "bridge": "cni0"});
        let list = as_list(&conf).unwrap();
        assert_eq!(
            list,
            json!({"cniVersion": "0.4.0", "name": "bridge", "plugins": [conf]})
        );
        assert!(as_list(&json!({"name": "x"})).is_err());
        assert!(as_list(&ours()).is_err());
    }
}
