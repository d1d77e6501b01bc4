//! Network namespaces a test makes, and pods joined by a bridge, with the guard rails of
//! `ARCHITECTURE.md` ("Testing pods"): before anything is sent, host rules reject the pod
//! subnet on every interface but the test's bridge, `ip route get` must say the bridge, and
//! everything made is removed on drop, also when the test fails. Needs root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs a command that must succeed.
pub fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Its standard output, trimmed.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A network namespace with `lo` up and a hosts file of its own, deleted when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `hosts` is the namespace's `/etc/hosts` (what `ip netns exec` mounts over it).
    pub fn create(name: &str, hosts: &str) -> Self {
        assert!(
            is_root(),
            "network namespaces need root: run the tests as root"
        );
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run("ip", &["netns", "add", name]);
        let ns = Self {
            name: name.to_string(),
        };
        std::fs::create_dir_all(ns.etc()).unwrap_or_else(|e| panic!("{}: {e}", ns.etc().display()));
        std::fs::write(
            ns.etc().join("hosts"),
            format!("127.0.0.1 localhost\n{hosts}"),
        )
        .unwrap_or_else(|e| panic!("hosts file: {e}"));
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn etc(&self) -> PathBuf {
        Path::new("/etc/netns").join(&self.name)
    }

    /// `ip -n NAME ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// `program` to run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
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

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = std::fs::remove_dir_all(self.etc());
    }
}

/// A bridge on the host with a /24 of pods behind it. The host keeps `.1`.
pub struct PodNet {
    pub bridge: String,
    /// `10.204.N`: the first three octets.
    prefix: String,
    guards: Vec<Vec<String>>,
    pods: usize,
}

impl PodNet {
    /// The bridge, its address, and the guard rails, checked before any pod exists.
    pub fn create(prefix: &str) -> Self {
        assert!(is_root(), "pods need root: run the tests as root");
        // Unique per subnet too: tests in one process make their own bridges side by side.
        let octet = prefix.rsplit('.').next().unwrap_or("0");
        let bridge = format!("o{octet}b{}", std::process::id() % 100_000);
        let subnet = format!("{prefix}.0/24");
        let _ = Command::new("ip").args(["link", "del", &bridge]).output();
        let mut net = Self {
            bridge: bridge.clone(),
            prefix: prefix.to_string(),
            guards: Vec::new(),
            pods: 0,
        };
        // The guard rails first: the pod subnet may use this bridge and nothing else.
        let host = format!("{prefix}.1");
        // Inserted in turn at the top, so the last is checked first: the host's own address
        // on the bridge is reached over `lo`, which is the one exception.
        for rule in [
            vec!["OUTPUT", "-d", &subnet, "!", "-o", &bridge, "-j", "REJECT"],
            vec!["OUTPUT", "-d", &host, "-o", "lo", "-j", "ACCEPT"],
            vec!["FORWARD", "-s", &subnet, "!", "-o", &bridge, "-j", "REJECT"],
            vec!["FORWARD", "-d", &subnet, "!", "-o", &bridge, "-j", "REJECT"],
        ] {
            let rule: Vec<String> = rule.iter().map(|s| s.to_string()).collect();
            let mut insert = vec!["-I".to_string()];
            insert.extend(rule.iter().cloned());
            let args: Vec<&str> = insert.iter().map(String::as_str).collect();
            run("iptables", &args);
            net.guards.push(rule);
        }
        run("ip", &["link", "add", &bridge, "type", "bridge"]);
        run(
            "ip",
            &["addr", "add", &format!("{prefix}.1/24"), "dev", &bridge],
        );
        run("ip", &["link", "set", &bridge, "up"]);
        let route = Command::new("ip")
            .args(["route", "get", &format!("{prefix}.2")])
            .output()
            .unwrap_or_else(|e| panic!("ip route get: {e}"));
        let route = stdout(&route);
        assert!(
            route.contains(&format!("dev {bridge}")),
            "the pod subnet must route over the test's bridge, but: {route}"
        );
        net
    }

    /// The host's address on the bridge.
    pub fn host(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// A pod: a namespace with `eth0` on the bridge at `.N` (2, 3, …), a route for the
    /// services' virtual IPs toward the bridge (interception answers them before they would
    /// leave), and `hosts` as its hosts file.
    pub fn pod(&mut self, name: &str, vip_range: &str, hosts: &str) -> (Netns, String) {
        self.pods += 1;
        let n = self.pods + 1;
        let ns = Netns::create(&format!("{name}-{}", std::process::id()), hosts);
        let host_end = format!("{}h{n}", self.bridge);
        let pod_end = format!("{}p{n}", self.bridge);
        run(
            "ip",
            &[
                "link", "add", &host_end, "type", "veth", "peer", "name", &pod_end,
            ],
        );
        run("ip", &["link", "set", &pod_end, "netns", &ns.name]);
        run(
            "ip",
            &["link", "set", &host_end, "master", &self.bridge, "up"],
        );
        ns.ip(&["link", "set", &pod_end, "name", "eth0"]);
        let ip = format!("{}.{n}", self.prefix);
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", vip_range, "via", &self.host()]);
        (ns, ip)
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        for rule in &self.guards {
            let mut args = vec!["-D".to_string()];
            args.extend(rule.iter().cloned());
            let _ = Command::new("iptables").args(&args).output();
        }
    }
}
