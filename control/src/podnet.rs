//! Pods on this machine: network namespaces joined by a bridge, with the guard rails of
//! `ARCHITECTURE.md` ("Testing pods"). `outrigger up --pods` and the interception tests both
//! make their pods with it.
//!
//! - Before any pod exists, host rules reject the pod subnet on every interface but the bridge,
//!   and `ip route get` must say the bridge: pod traffic never leaves the machine.
//! - Each pod is a namespace with `lo` up, a hosts file of its own (`/etc/netns/NAME/hosts`,
//!   which `ip netns exec` mounts over `/etc/hosts`) and `eth0` on the bridge.
//! - Everything is removed on drop, also when what used it failed.
//!
//! Needs root (CAP_NET_ADMIN), `ip` (iproute2) and `iptables`.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    #[error("pods need root: they are network namespaces, a bridge and iptables rules (run as root, e.g. with sudo)")]
    NotRoot,
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the pod subnet must route over bridge {bridge}, but `ip route get` says: {route}")]
    Route { bridge: String, route: String },
}

/// Whether this process may make pods.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs `program args`, which must succeed; returns its standard output.
pub fn run(program: &str, args: &[&str]) -> Result<String, PodNetError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| PodNetError::Spawn {
            program: program.to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(PodNetError::Failed {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace with `lo` up and a hosts file of its own, deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `hosts` is the namespace's `/etc/hosts`, after a `localhost` line.
    pub fn create(name: &str, hosts: &str) -> Result<Self, PodNetError> {
        if !is_root() {
            return Err(PodNetError::NotRoot);
        }
        // One left by a run that was killed.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run("ip", &["netns", "add", name])?;
        let ns = Self {
            name: name.to_string(),
        };
        let etc = ns.etc();
        std::fs::create_dir_all(&etc).map_err(|source| PodNetError::Write {
            path: etc.clone(),
            source,
        })?;
        let hosts_file = etc.join("hosts");
        std::fs::write(&hosts_file, format!("127.0.0.1 localhost\n{hosts}")).map_err(|source| {
            PodNetError::Write {
                path: hosts_file,
                source,
            }
        })?;
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn etc(&self) -> PathBuf {
        Path::new("/etc/netns").join(&self.name)
    }

    /// `ip -n NAME ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> Result<String, PodNetError> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `program` to run inside the namespace (`ip netns exec`, which execs it: the child's
    /// pid is the program's, so signals reach it).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// `ip netns exec NAME` and `program`, as arguments for a caller that spawns `ip` itself.
    pub fn exec_args(&self, program: &Path) -> Vec<String> {
        vec![
            "netns".into(),
            "exec".into(),
            self.name.clone(),
            program.display().to_string(),
        ]
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
#[derive(Debug)]
pub struct PodNet {
    pub bridge: String,
    /// `10.204.N`: the first three octets.
    prefix: String,
    guards: Vec<Vec<String>>,
    pods: usize,
}

impl PodNet {
    /// The bridge `bridge` (at most 11 characters: pods' veths add 4), its address `.1` and the
    /// guard rails, checked before any pod exists.
    pub fn create(prefix: &str, bridge: &str) -> Result<Self, PodNetError> {
        if !is_root() {
            return Err(PodNetError::NotRoot);
        }
        let subnet = format!("{prefix}.0/24");
        let _ = Command::new("ip").args(["link", "del", bridge]).output();
        let mut net = Self {
            bridge: bridge.to_string(),
            prefix: prefix.to_string(),
            guards: Vec::new(),
            pods: 0,
        };
        // The guard rails first: the pod subnet may use this bridge and nothing else.
        let host = net.host();
        // Inserted in turn at the top, so the last is checked first: the host's own address
        // on the bridge is reached over `lo`, which is the one exception.
        for rule in [
            vec!["OUTPUT", "-d", &subnet, "!", "-o", bridge, "-j", "REJECT"],
            vec!["OUTPUT", "-d", &host, "-o", "lo", "-j", "ACCEPT"],
            vec!["FORWARD", "-s", &subnet, "!", "-o", bridge, "-j", "REJECT"],
            vec!["FORWARD", "-d", &subnet, "!", "-o", bridge, "-j", "REJECT"],
        ] {
            let mut args = vec!["-I"];
            args.extend(rule.iter().copied());
            run("iptables", &args)?;
            // Kept as soon as it exists, so drop removes it even if a later step fails.
            net.guards
                .push(rule.iter().map(|s| s.to_string()).collect());
        }
        run("ip", &["link", "add", bridge, "type", "bridge"])?;
        run("ip", &["addr", "add", &format!("{host}/24"), "dev", bridge])?;
        run("ip", &["link", "set", bridge, "up"])?;
        let route = run("ip", &["route", "get", &format!("{prefix}.2")])?;
        if !route.contains(&format!("dev {bridge}")) {
            return Err(PodNetError::Route {
                bridge: bridge.to_string(),
                route: route.trim().to_string(),
            });
        }
        Ok(net)
    }

    /// The host's address on the bridge.
    pub fn host(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// A pod: a namespace with `eth0` on the bridge at `.N` (2, 3, …), a route for the
    /// services' virtual IPs toward the bridge (interception answers them before they would
    /// leave), and `hosts` as its hosts file. Returns it and its address.
    pub fn pod(
        &mut self,
        name: &str,
        vip_range: &str,
        hosts: &str,
    ) -> Result<(Netns, String), PodNetError> {
        self.pods += 1;
        let n = self.pods + 1;
        let ns = Netns::create(name, hosts)?;
        let host_end = format!("{}h{n}", self.bridge);
        let pod_end = format!("{}p{n}", self.bridge);
        run(
            "ip",
            &[
                "link", "add", &host_end, "type", "veth", "peer", "name", &pod_end,
            ],
        )?;
        run("ip", &["link", "set", &pod_end, "netns", &ns.name])?;
        run(
            "ip",
            &["link", "set", &host_end, "master", &self.bridge, "up"],
        )?;
        ns.ip(&["link", "set", &pod_end, "name", "eth0"])?;
        let ip = format!("{}.{n}", self.prefix);
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", vip_range, "via", &self.host()])?;
        Ok((ns, ip))
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        // Deleting the bridge takes the host ends of the veths with it.
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
