//! `outrigger up --pods`: the shop in pods on this machine, apps unchanged. Each instance gets
//! a network namespace on a bridge `up` makes (with the guard rails of `podnet`), the init
//! step's rules, its app on `0.0.0.0:8080` and its sidecar as uid 1337. Apps call each other by
//! name (`http://payment/…`): every pod's hosts file maps the services to virtual IPs, and the
//! rules take each connection to the sidecar. The control plane runs on the host, on the
//! bridge's address.
//!
//! What `up` itself reads from outside the pods: each sidecar's admin on the pod's address
//! (port 15000; on the bridge only, which nothing but this host reaches), its health port
//! (15021), and through it the app's `/healthz` and `/admin/stats` as app probes. The shoppers
//! call the storefront pod's sidecar on its outbound port, which the rules leave alone: that
//! pod is the mesh's edge.

use super::UpError;
use outrigger_control::podnet::{Netns, PodNet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// The pods' subnet (`.1` is the host) and the services' virtual IPs.
const SUBNET: &str = "10.205.0";
const VIP_RANGE: &str = "10.96.0.0/16";
const SERVICES: [(&str, &str); 5] = [
    ("user", "10.96.0.11"),
    ("catalog", "10.96.0.12"),
    ("inventory", "10.96.0.13"),
    ("payment", "10.96.0.14"),
    ("order", "10.96.0.15"),
];
pub const APP_PORT: u16 = 8080;
pub const ADMIN_PORT: u16 = 15000;
pub const HEALTH_PORT: u16 = 15021;
pub const PROXY_UID: u32 = 1337;
/// The app probes each sidecar makes for `up` (the health listener's `/app-health/…`).
pub const READY_PROBE: &str = "/app-health/shop/readyz";
pub const STATS_PROBE: &str = "/app-health/shop/stats";

/// The bridge and every pod; dropping it removes them all.
pub struct Pods {
    // Dropped before the bridge: namespaces first, then the bridge and its guard rails.
    pods: Vec<Netns>,
    net: PodNet,
}

/// One pod: its namespace's name and its address on the bridge.
pub struct Pod {
    pub netns: String,
    pub ip: IpAddr,
}

impl Pod {
    pub fn at(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip, port)
    }
}

impl Pods {
    pub fn create() -> Result<Self, UpError> {
        let bridge = format!("orup{}", std::process::id() % 100_000);
        Ok(Self {
            pods: Vec::new(),
            net: PodNet::create(SUBNET, &bridge)?,
        })
    }

    pub fn bridge(&self) -> &str {
        &self.net.bridge
    }

    /// The host's address on the bridge, where the control plane listens.
    pub fn host_ip(&self) -> Result<IpAddr, UpError> {
        self.net
            .host()
            .parse()
            .map_err(|_| UpError::Control(format!("bad bridge address {}", self.net.host())))
    }

    /// A pod named `name`, with the init step's rules in place (the health port left alone, so
    /// `up` reaches it).
    pub fn pod(&mut self, name: &str, proxy: &Path) -> Result<Pod, UpError> {
        let hosts: String = SERVICES
            .iter()
            .map(|(s, vip)| format!("{vip} {s}\n"))
            .collect();
        let name = format!("orr-{name}-{}", std::process::id() % 100_000);
        let (ns, ip) = self.net.pod(&name, VIP_RANGE, &hosts)?;
        let out = ns
            .command(proxy)
            .args([
                "init",
                "--inbound-ports-to-ignore",
                &HEALTH_PORT.to_string(),
            ])
            .output()
            .map_err(|e| UpError::Control(format!("outrigger-proxy init in {name}: {e}")))?;
        if !out.status.success() {
            return Err(UpError::Control(format!(
                "outrigger-proxy init in {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let ip = ip
            .parse()
            .map_err(|_| UpError::Control(format!("bad pod address {ip}")))?;
        let netns = ns.name.clone();
        self.pods.push(ns);
        Ok(Pod { netns, ip })
    }
}

/// `ip` arguments that run `bin args` in `netns`; as the proxy's uid for a sidecar.
pub fn in_pod(netns: &str, bin: &Path, args: &[String], as_proxy: bool) -> Vec<String> {
    let mut a: Vec<String> = vec!["netns".into(), "exec".into(), netns.into()];
    if as_proxy {
        a.extend(
            [
                "setpriv",
                "--reuid=1337",
                "--regid=1337",
                "--clear-groups",
                "--",
            ]
            .map(String::from),
        );
    }
    a.push(bin.display().to_string());
    a.extend(args.iter().cloned());
    a
}

/// The sidecar flags a pod adds: its health port on the pod's address, and the app probes
/// `up` reads there.
pub fn sidecar_flags(pod_ip: IpAddr) -> Vec<String> {
    let probes = serde_json::json!({
        READY_PROBE: {"port": APP_PORT, "path": "/healthz"},
        STATS_PROBE: {"port": APP_PORT, "path": "/admin/stats"},
    });
    vec![
        "--health".into(),
        SocketAddr::new(pod_ip, HEALTH_PORT).to_string(),
        "--app-probes".into(),
        probes.to_string(),
    ]
}

/// Gives the file to the proxy's uid (its bootstrap token, mode 0600).
pub fn give_to_proxy(path: &Path) -> Result<(), UpError> {
    std::os::unix::fs::chown(path, Some(PROXY_UID), Some(PROXY_UID)).map_err(|source| UpError::Io {
        what: format!("giving {} to uid {PROXY_UID}", path.display()),
        source,
    })
}
