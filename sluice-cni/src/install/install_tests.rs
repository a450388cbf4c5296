use std::fs;

use super::*;
use crate::testutil::Scratch;

const FLANNEL: &str = r#"{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    { "type": "flannel", "delegate": { "hairpinMode": true, "isDefaultGateway": true } },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
"#;

const BRIDGE_CONF: &str = r#"{"cniVersion": "1.0.0", "name": "mynet", "type": "bridge",
 "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}}"#;

fn entry() -> Value {
    Entry {
        agent_socket: Some("/var/run/sluice/cni.sock".into()),
        kubeconfig: Some("/etc/cni/net.d/sluice-kubeconfig".into()),
        ..Entry::default()
    }
    .to_json()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn json_of(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

#[test]
fn a_conflist_gets_our_entry_last_and_gets_its_bytes_back() {
    let dir = Scratch::new("conflist");
    let d = dir.path();
    fs::write(d.join("10-flannel.conflist"), FLANNEL).unwrap();
    fs::write(
        d.join("99-loopback.conf"),
        r#"{"cniVersion":"0.3.1","type":"loopback"}"#,
    )
    .unwrap();

    let first = d.join("10-flannel.conflist");
    assert_eq!(
        ensure_chained(d, &entry()).unwrap(),
        Change::Updated(first.clone())
    );
    let list = json_of(&first);
    assert_eq!(list["plugins"][2], entry());
    assert_eq!(list["plugins"][0]["type"], "flannel");
    let after = fs::read(&first).unwrap();
    assert_eq!(ensure_chained(d, &entry()).unwrap(), Change::Unchanged);
    assert_eq!(
        fs::read(&first).unwrap(),
        after,
        "a second install changes nothing"
    );
    assert_eq!(
        names(d),
        [
            "10-flannel.conflist",
            "10-flannel.conflist.sluice-cni.orig",
            "99-loopback.conf"
        ]
    );

    assert_eq!(uninstall_chain(d).unwrap(), std::slice::from_ref(&first));
    assert_eq!(fs::read_to_string(&first).unwrap(), FLANNEL);
    assert_eq!(names(d), ["10-flannel.conflist", "99-loopback.conf"]);
    assert!(
        uninstall_chain(d).unwrap().is_empty(),
        "a second uninstall changes nothing"
    );
}

#[test]
fn a_conf_becomes_a_conflist_and_comes_back() {
    let dir = Scratch::new("conf");
    let d = dir.path();
    fs::write(d.join("10-bridge.conf"), BRIDGE_CONF).unwrap();
    let change = ensure_chained(d, &entry()).unwrap();
    let to = d.join("10-bridge.conflist");
    assert_eq!(
        change,
        Change::Converted {
            from: d.join("10-bridge.conf"),
            to: to.clone()
        }
    );
    let list = json_of(&to);
    assert_eq!(
        (list["name"].as_str(), list["cniVersion"].as_str()),
        (Some("mynet"), Some("1.0.0"))
    );
    assert_eq!(
        list["plugins"][0],
        serde_json::from_str::<Value>(BRIDGE_CONF).unwrap()
    );
    assert_eq!(list["plugins"][1], entry());
    assert_eq!(
        names(d),
        ["10-bridge.conf.sluice-cni.orig", "10-bridge.conflist"]
    );
    assert_eq!(ensure_chained(d, &entry()).unwrap(), Change::Unchanged);

    assert_eq!(uninstall_chain(d).unwrap(), [d.join("10-bridge.conf")]);
    assert_eq!(names(d), ["10-bridge.conf"]);
    assert_eq!(
        fs::read_to_string(d.join("10-bridge.conf")).unwrap(),
        BRIDGE_CONF
    );
}

#[test]
fn a_primary_that_rewrites_its_file_is_chained_again_and_kept_on_uninstall() {
    let dir = Scratch::new("rewrite");
    let d = dir.path();
    let first = d.join("10-flannel.conflist");
    fs::write(&first, FLANNEL).unwrap();
    ensure_chained(d, &entry()).unwrap();
    // The primary restarts and writes its own list again, with a new plugin.
    let rewritten = FLANNEL.replace("\"portmap\"", "\"bandwidth\"");
    fs::write(&first, &rewritten).unwrap();
    assert_eq!(
        ensure_chained(d, &entry()).unwrap(),
        Change::Updated(first.clone())
    );
    assert_eq!(json_of(&first)["plugins"][2], entry());
    assert_eq!(
        fs::read_to_string(files::backup_of(&first)).unwrap(),
        rewritten
    );
    uninstall_chain(d).unwrap();
    assert_eq!(fs::read_to_string(&first).unwrap(), rewritten);

    // Changed again while chained: uninstall takes out our entry and keeps the change.
    ensure_chained(d, &entry()).unwrap();
    let mut changed = json_of(&first);
    changed["name"] = "renamed".into();
    fs::write(&first, serde_json::to_vec(&changed).unwrap()).unwrap();
    uninstall_chain(d).unwrap();
    let left = json_of(&first);
    assert_eq!(left["name"], "renamed");
    assert_eq!(left["plugins"].as_array().unwrap().len(), 2);
    assert_eq!(names(d), ["10-flannel.conflist"]);
}

#[test]
fn our_entry_follows_the_first_file() {
    let dir = Scratch::new("moves");
    let d = dir.path();
    fs::write(d.join("20-flannel.conflist"), FLANNEL).unwrap();
    ensure_chained(d, &entry()).unwrap();
    // A new primary config sorts first: the entry moves there, the old file is restored.
    fs::write(d.join("05-bridge.conf"), BRIDGE_CONF).unwrap();
    ensure_chained(d, &entry()).unwrap();
    assert_eq!(
        fs::read_to_string(d.join("20-flannel.conflist")).unwrap(),
        FLANNEL
    );
    assert_eq!(
        json_of(&d.join("05-bridge.conflist"))["plugins"][1],
        entry()
    );
    uninstall_chain(d).unwrap();
    assert_eq!(names(d), ["05-bridge.conf", "20-flannel.conflist"]);
}

#[test]
fn nothing_to_chain_into_is_an_error() {
    let dir = Scratch::new("empty");
    let d = dir.path();
    assert!(matches!(
        ensure_chained(d, &entry()),
        Err(InstallError::NoConfig(_))
    ));
    fs::write(d.join("10-x.conflist"), "{ half").unwrap();
    assert!(matches!(
        ensure_chained(d, &entry()),
        Err(InstallError::Invalid { .. })
    ));
    fs::write(d.join("10-x.conflist"), "{\"plugins\": []}").unwrap();
    assert!(matches!(
        ensure_chained(d, &entry()),
        Err(InstallError::Invalid { .. })
    ));
    // A .conf whose .conflist name is taken by a file we did not write.
    fs::write(d.join("01-a.conf"), BRIDGE_CONF).unwrap();
    fs::write(d.join("01-a.conflist"), FLANNEL).unwrap();
    assert!(matches!(
        ensure_chained(d, &entry()),
        Err(InstallError::WouldOverwrite { .. })
    ));
}

#[test]
fn the_binary_is_copied_once_and_executable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Scratch::new("bin");
    let src = dir.path().join("src");
    fs::write(&src, b"\x7fELF pretend").unwrap();
    let dest = dir.path().join("sluice-cni");
    assert!(files::copy_binary(&src, &dest).unwrap());
    assert!(!files::copy_binary(&src, &dest).unwrap());
    assert_eq!(
        fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
        0o755
    );
    uninstall(dir.path(), Some(&dest)).unwrap();
    assert!(!dest.exists());
}
