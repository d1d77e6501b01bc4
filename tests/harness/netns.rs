//! Network namespaces a test makes, and pods joined by a bridge, with the guard rails of
//! `ARCHITECTURE.md` ("Testing pods"). The pods themselves are `outrigger_control::podnet`'s,
//! the same code `outrigger up --pods` uses; this adds what tests want of them: a panic with
//! the reason instead of an error, and helpers to run things inside. Needs root.

use outrigger_control::podnet;
use std::process::Output;

pub use podnet::is_root;

/// Runs a command that must succeed.
pub fn run(program: &str, args: &[&str]) {
    podnet::run(program, args).unwrap_or_else(|e| panic!("{e}"));
}

/// Its standard output, trimmed.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A network namespace with `lo` up and a hosts file of its own, deleted when dropped.
pub struct Netns(podnet::Netns);

impl std::ops::Deref for Netns {
    type Target = podnet::Netns;
    fn deref(&self) -> &podnet::Netns {
        &self.0
    }
}

impl Netns {
    /// `hosts` is the namespace's `/etc/hosts` (what `ip netns exec` mounts over it).
    pub fn create(name: &str, hosts: &str) -> Self {
        Self(podnet::Netns::create(name, hosts).unwrap_or_else(|e| panic!("{e}")))
    }

    /// `ip -n NAME ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        self.0.ip(args).unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {program}: {e}"))
    }

    /// `iptables ARGS` inside, which must succeed.
    pub fn iptables(&self, args: &[&str]) {
        self.iptables_with("iptables", args);
    }

    /// `IPTABLES ARGS` inside (`iptables-nft`, `iptables-legacy`), which must succeed.
    pub fn iptables_with(&self, iptables: &str, args: &[&str]) {
        let out = self.exec(iptables, args);
        assert!(
            out.status.success(),
            "iptables {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The init step, as a pod's init container runs it: `outrigger-proxy init` in this
    /// namespace, with the default ports (outbound 15001, inbound 15006, proxy uid 1337).
    pub fn init(&self, extra: &[&str]) {
        let out = self
            .command(crate::bin("outrigger-proxy"))
            .arg("init")
            .args(extra)
            .output()
            .unwrap_or_else(|e| panic!("outrigger-proxy init: {e}"));
        assert!(
            out.status.success(),
            "outrigger-proxy init {extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A bridge on the host with a /24 of pods behind it. The host keeps `.1`.
pub struct PodNet(podnet::PodNet);

impl PodNet {
    /// The bridge, its address, and the guard rails, checked before any pod exists. The
    /// bridge is named per subnet and process: tests in one process make theirs side by side.
    pub fn create(prefix: &str) -> Self {
        assert!(is_root(), "pods need root: run the tests as root");
        let octet = prefix.rsplit('.').next().unwrap_or("0");
        let bridge = format!("o{octet}b{}", std::process::id() % 100_000);
        Self(podnet::PodNet::create(prefix, &bridge).unwrap_or_else(|e| panic!("{e}")))
    }

    /// The host's address on the bridge.
    pub fn host(&self) -> String {
        self.0.host()
    }

    /// A pod named `NAME-PID` (see [`podnet::PodNet::pod`]), and its address.
    pub fn pod(&mut self, name: &str, vip_range: &str, hosts: &str) -> (Netns, String) {
        let name = format!("{name}-{}", std::process::id());
        let (ns, ip) = self
            .0
            .pod(&name, vip_range, hosts)
            .unwrap_or_else(|e| panic!("{e}"));
        (Netns(ns), ip)
    }
}

/// A process in a pod (or any child), killed when dropped; its stdin, when kept, stays open
/// until then (the test peers exit when it closes).
pub struct Running {
    pub child: std::process::Child,
    _stdin: Option<std::process::ChildStdin>,
}

impl Running {
    pub fn new(child: std::process::Child) -> Self {
        Self {
            child,
            _stdin: None,
        }
    }

    /// Spawns `cmd` with piped stdin and stdout and waits for its first line, which must be
    /// `ready` (the test peers print it once they listen).
    pub fn until_ready(mut cmd: std::process::Command) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let stdin = child.stdin.take();
        let mut ready = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut ready);
        }
        let running = Self {
            child,
            _stdin: stdin,
        };
        assert_eq!(ready.trim(), "ready", "{cmd:?} did not start");
        running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Netns {
    /// One sample of the pod's sidecar's `/metrics` (admin on 127.0.0.1:15000 inside), by
    /// name and its exact label set; 0 when absent.
    pub fn metric(&self, name: &str, labels: &str) -> f64 {
        let text = stdout(&self.exec("curl", &["-s", "http://127.0.0.1:15000/metrics"]));
        let needle = format!("{name}{{{labels}}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

/// A temporary directory the pods' unprivileged processes (the sidecar as uid 1337) can read.
pub fn readable_tempdir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    dir
}
