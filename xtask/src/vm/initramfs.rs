//! The VM's whole userland, as one initramfs: busybox, the host programs of `userland` with
//! their libraries, the kernel's modules, the static test binaries and an `/init` that mounts
//! what the test bed expects, loads the modules, runs the suites and prints the markers the
//! host parses.

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::cpio;
use super::modules::ModuleSet;
use super::report::marker;
use super::userland::Userland;

/// What goes into every kernel's initramfs; only the modules and the kernel's test skips
/// differ.
pub struct Payload {
    pub busybox: PathBuf,
    /// Host programs, their libraries and aliases.
    pub userland: Userland,
    pub agent: PathBuf,
    pub testapp: PathBuf,
    pub httpapp: PathBuf,
    pub suites: Vec<(String, PathBuf)>,
    /// Extra arguments for every test executable (e.g. a name filter).
    pub test_args: Vec<String>,
    /// `KEY=VALUE` pairs exported before the suites run (e.g. `RUST_LOG=debug`).
    pub env: Vec<String>,
}

/// Kernel command-line word that makes `/init` stop right after boot: the KVM probe.
pub const PROBE_ARG: &str = "sluice.probe";

/// Writes the initramfs for one kernel to `path`.
pub fn write(
    path: &Path,
    payload: &Payload,
    modules: &ModuleSet,
    skip: &dyn Fn(&str) -> Vec<&'static str>,
) -> Result<()> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut cpio = cpio::Writer::new(BufWriter::new(file));
    let io =
        |e: std::io::Error| anyhow::Error::new(e).context(format!("writing {}", path.display()));
    for dir in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "tmp", "run", "etc", "root",
    ] {
        cpio.dir(dir).map_err(io)?;
    }
    cpio.char_device("dev/console", 5, 1).map_err(io)?;
    cpio.file(
        "init",
        0o755,
        init_script(payload, &modules.load, skip).as_bytes(),
    )
    .map_err(io)?;
    add(&mut cpio, "bin/busybox", &payload.busybox)?;
    // Tools that read these files misbehave without them (e.g. `ip netns` expects /etc).
    cpio.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
        .map_err(io)?;
    cpio.file("etc/group", 0o644, b"root:x:0:\n").map_err(io)?;
    for (guest, host) in &payload.userland.files {
        add(&mut cpio, guest, host)?;
    }
    for (guest, target) in &payload.userland.links {
        cpio.symlink(guest, target).map_err(io)?;
    }
    // busybox `depmod` in `/init` writes modules.dep and modules.alias from these.
    for module in &modules.modules {
        let guest = format!("lib/modules/{}/{}", modules.release, module.path);
        cpio.file(&guest, 0o644, &module.image).map_err(io)?;
    }
    add(&mut cpio, "sluice/mesh-agent", &payload.agent)?;
    add(&mut cpio, "sluice/sluice-testapp", &payload.testapp)?;
    add(&mut cpio, "sluice/sluice-httpapp", &payload.httpapp)?;
    for (name, binary) in &payload.suites {
        add(&mut cpio, &format!("sluice/tests/{name}"), binary)?;
    }
    cpio.finish().map_err(io)?;
    Ok(())
}

/// Adds a host file (symlinks followed) as a regular file; libraries keep their host path,
/// where the host's loader and binaries look for them.
fn add<W: std::io::Write>(cpio: &mut cpio::Writer<W>, guest: &str, host: &Path) -> Result<()> {
    let data = fs::read(host).with_context(|| format!("cannot read {}", host.display()))?;
    cpio.file(guest, 0o755, &data)
        .with_context(|| format!("cannot add {} to the initramfs", host.display()))
}

/// Single-quotes `word` for the guest's shell.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The guest's `/init`. Runs as PID 1 under busybox sh; every path the test bed needs is a
/// fresh mount: /run/netns for `ip netns`, cgroup2 at /sys/fs/cgroup, bpffs at /sys/fs/bpf.
/// It never exits (that would panic the kernel): it powers off, and the host reads markers.
/// `load` are the modules to load at boot; the kernel asks `/sbin/modprobe` (busybox) for
/// the rest on demand.
fn init_script(
    payload: &Payload,
    load: &[String],
    skip: &dyn Fn(&str) -> Vec<&'static str>,
) -> String {
    let mut exports = String::new();
    for pair in &payload.env {
        exports.push_str(&format!("export {}\n", quote(pair)));
    }
    let mut suites = String::new();
    for (name, _) in &payload.suites {
        let skips = skip(name);
        let args: Vec<String> = (payload.test_args.iter().map(String::as_str))
            .chain(skips.iter().flat_map(|filter| ["--skip", *filter]))
            .map(quote)
            .collect();
        suites.push_str(&format!("run_suite {} {}\n", quote(name), args.join(" ")));
    }
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /run/netns
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
echo "{boot} $(uname -r)"
if grep -qw {probe_arg} /proc/cmdline; then
  echo "{probe_ok}"
  poweroff -f
fi
depmod || echo "{note} depmod failed"
for module in {load}; do
  modprobe "$module" || echo "{note} modprobe $module failed"
done
ip link set lo up
echo "{features} begin"
bpftool feature probe kernel 2>&1 | awk '
  /^eBPF helpers supported for program type/ {{ section = $NF; sub(":", "", section); next }}
  /^\t- / {{ if (section ~ /^({prog_types})$/) print "{features} helper " section " " $2; next }}
  /program_type|map_type/ {{ section = ""; print "{features} " $0; next }}
  {{ section = "" }}'
/sluice/mesh-agent check 2>&1 | awk '
  /^(ebpf|nftables|iptables) +(available|unavailable)$/ {{ print "{features} mode " $1 " " $2; next }}
  /^mode: / {{ print "{features} mode chosen " $2; next }}
  /^FAIL / {{ print "{features} check " $0 }}'
echo "{features} end"
{holder}
export SLUICE_AGENT_BIN=/sluice/mesh-agent SLUICE_TESTAPP_BIN=/sluice/sluice-testapp \
    SLUICE_HTTPAPP_BIN=/sluice/sluice-httpapp
export RUST_BACKTRACE=1
{exports}cd /tmp
worst=0
hold_static_keys || worst=1
run_suite() {{
  name=$1; shift
  echo "{suite_begin} $name"
  start=$(date +%s)
  "/sluice/tests/$name" --test-threads=1 "$@"
  status=$?
  echo "{suite_end} $name exit=$status seconds=$(( $(date +%s) - start ))"
  [ "$status" -eq 0 ] || worst=$status
}}
{suites}echo "{done} exit=$worst"
sync
poweroff -f
"#,
        boot = marker::BOOT,
        probe_arg = PROBE_ARG,
        probe_ok = marker::PROBE_OK,
        note = marker::NOTE,
        load = load.join(" "),
        features = marker::FEATURE,
        prog_types = super::report::prog_types().join("|"),
        suite_begin = marker::SUITE_BEGIN,
        suite_end = marker::SUITE_END,
        done = marker::DONE,
        holder = static_key_holder(),
    )
}

/// Defines `hold_static_keys`, which starts an agent of the guest's own that keeps one
/// program of each cgroup attach type and an `sk_lookup` link attached for the VM's life,
/// in a cgroup subtree and netns no test touches.
///
/// Why: the kernel guards each BPF hook with a static key and rewrites its code (through a
/// temporary `int3`) whenever the first program of a type attaches or the last detaches,
/// which every test's agent does. A 6.12 TCG guest died right there (an `Oops: int3` at the
/// getsockopt hook); a 5.10 one hung with no call trace, which may or may not be the same.
/// Held keys never flip, so that rewriting does not happen while the suites run
/// (tests/README, "In the kernel VMs").
fn static_key_holder() -> String {
    format!(
        r#"hold_static_keys() {{
  keys=/sys/fs/cgroup/sluice-vm-keys
  # iproute2's ip by path: busybox sh runs its own applet for a bare `ip`.
  mkdir -p "$keys/agent" "$keys/pod" && /usr/sbin/ip netns add sluice-vm-keys &&
    /usr/sbin/ip -n sluice-vm-keys link set lo up || return 1
  cat > /tmp/vm-keys.yaml <<'EOF'
node: vm-keys
cgroupRoot: /sys/fs/cgroup/sluice-vm-keys
bpffsRoot: /sys/fs/bpf/sluice-vm-keys
adminAddress: 127.0.0.1:19000
metricsAddress: 127.0.0.1:19020
readinessAddress: 127.0.0.1:19021
redirect: {{mode: ebpf}}
workloads:
  - name: keys
    namespace: vm
    ips: ["10.255.255.1"]
    netns: /run/netns/sluice-vm-keys
    cgroup: /sys/fs/cgroup/sluice-vm-keys/pod
EOF
  sh -c 'echo $$ > /sys/fs/cgroup/sluice-vm-keys/agent/cgroup.procs &&
    exec /sluice/mesh-agent run --config /tmp/vm-keys.yaml' > /tmp/vm-keys.log 2>&1 &
  for _ in $(seq 120); do
    if grep -q 'pod enrolled' /tmp/vm-keys.log && grep -q ' ready' /tmp/vm-keys.log; then
      echo "{note} static keys held by the vm-keys agent"
      return 0
    fi
    sleep 1
  done
  echo "{note} the vm-keys agent did not become ready:"
  cat /tmp/vm-keys.log
  return 1
}}"#,
        note = marker::NOTE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_runs_each_suite_single_threaded_with_quoted_args() {
        let payload = Payload {
            busybox: PathBuf::new(),
            userland: Userland::default(),
            agent: PathBuf::new(),
            testapp: PathBuf::new(),
            httpapp: PathBuf::new(),
            suites: vec![("outbound".into(), PathBuf::new())],
            test_args: vec!["it's".into()],
            env: vec!["RUST_LOG=debug".into()],
        };
        let script = init_script(&payload, &["veth".into(), "nf_tables".into()], &|_| {
            vec!["x::"]
        });
        assert!(script.contains("run_suite 'outbound' 'it'\\''s' '--skip' 'x::'\n"));
        assert!(script.contains("--test-threads=1"));
        assert!(script.contains("export 'RUST_LOG=debug'\n"));
        assert!(script.contains("mount -t cgroup2 cgroup2 /sys/fs/cgroup"));
        assert!(script.contains("for module in veth nf_tables; do"));
        assert!(script.find("depmod") < script.find("modprobe \"$module\""));
    }
}
