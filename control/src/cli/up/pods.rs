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

/// The pods' subnets: a free `10.205.N.0/24` (`.1` is the host), so that several `up --pods`
/// can run side by side; and the services' virtual IPs (inside each pod only).
const SUBNET_BASE: &str = "10.205";
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
    /// With `--containers`: how processes run.
    pub containers: Option<Containers>,
    // Dropped before the bridge: namespaces first, then the bridge and its guard rails.
    pods: Vec<Netns>,
    net: PodNet,
}

/// A /24 under [`SUBNET_BASE`] no route of this host covers yet, tried from a per-process
/// start so that two `up`s started together pick different ones.
fn free_subnet() -> Result<String, UpError> {
    let start = std::process::id() % 250;
    for i in 0..250 {
        let prefix = format!("{SUBNET_BASE}.{}", (start + i) % 250);
        let routes =
            outrigger_control::podnet::run("ip", &["route", "show", &format!("{prefix}.0/24")])?;
        if routes.trim().is_empty() {
            return Ok(prefix);
        }
    }
    Err(UpError::Control(format!(
        "every {SUBNET_BASE}.N.0/24 is routed already: remove the bridges of earlier runs (ip link del orupPID)"
    )))
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
    pub fn create(containers: Option<Containers>) -> Result<Self, UpError> {
        if let Some(c) = &containers {
            c.check_images()?;
        }
        let bridge = format!("orup{}", std::process::id() % 100_000);
        Ok(Self {
            containers,
            pods: Vec::new(),
            net: PodNet::create(&free_subnet()?, &bridge)?,
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
    /// `up` reaches it) unless `init` is false (the control plane's pod).
    pub fn pod(&mut self, name: &str, proxy: &Path, init: bool) -> Result<Pod, UpError> {
        let hosts: String = SERVICES
            .iter()
            .map(|(s, vip)| format!("{vip} {s}\n"))
            .collect();
        let name = format!("orr-{name}-{}", std::process::id() % 100_000);
        let (ns, ip) = self.net.pod(&name, VIP_RANGE, &hosts)?;
        if init {
            let out = match &self.containers {
                Some(c) => std::process::Command::new("podman")
                    .args(c.init_args(&ns.name))
                    .output(),
                None => ns
                    .command(proxy)
                    .args([
                        "init",
                        "--inbound-ports-to-ignore",
                        &HEALTH_PORT.to_string(),
                    ])
                    .output(),
            }
            .map_err(|e| UpError::Control(format!("outrigger-proxy init in {name}: {e}")))?;
            if !out.status.success() {
                return Err(UpError::Control(format!(
                    "outrigger-proxy init in {name}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
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
fn in_pod(netns: &str, bin: &Path, args: &[String], as_proxy: bool) -> Vec<String> {
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

impl Pods {
    /// The program and its arguments that run `bin args` in `pod` as `role`.
    pub fn command(
        &mut self,
        pod: &Pod,
        name: &str,
        bin: &Path,
        args: &[String],
        role: Role,
    ) -> (std::path::PathBuf, Vec<String>) {
        match &mut self.containers {
            Some(c) => ("podman".into(), c.run_args(&pod.netns, name, role, args)),
            None => (
                "ip".into(),
                in_pod(&pod.netns, bin, args, role == Role::Sidecar),
            ),
        }
    }
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

/// `--containers`: every process a podman container from the images `deploy/build-images.sh`
/// makes, joined to its pod's namespace (`--network ns:/run/netns/NAME`; never podman's own
/// networks). Files the processes read or write stay in the work directory, mounted at the
/// same path. Nothing runs as root but the init step, which has only NET_ADMIN and NET_RAW.
pub struct Containers {
    pub tag: String,
    pub workdir: std::path::PathBuf,
    /// Names of the containers started, removed on the way out whatever happened.
    pub started: Vec<String>,
}

/// What a container runs as.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Sidecar,
    App,
    Control,
}

/// The uid the control plane and the shop run as in their images.
pub const APP_UID: u32 = 65532;

impl Containers {
    /// Fails, saying what to run, unless every image exists.
    pub fn check_images(&self) -> Result<(), UpError> {
        for image in ["proxy", "init", "control", "shop"] {
            let name = self.image(image);
            let ok = std::process::Command::new("podman")
                .args(["image", "exists", &name])
                .status()
                .map_err(|e| UpError::Control(format!("podman: {e} (install podman)")))?;
            if !ok.success() {
                return Err(UpError::Control(format!(
                    "no image {name}: build the images first (deploy/build-images.sh --tag {})",
                    self.tag
                )));
            }
        }
        Ok(())
    }

    fn image(&self, name: &str) -> String {
        format!("localhost/outrigger-{name}:{}", self.tag)
    }

    /// `podman` arguments that run `args` in the image for `role`, in `netns`.
    pub fn run_args(
        &mut self,
        netns: &str,
        name: &str,
        role: Role,
        args: &[String],
    ) -> Vec<String> {
        let container = format!("{name}-{}", std::process::id() % 100_000);
        self.started.push(container.clone());
        let wd = self.workdir.display().to_string();
        let (user, image, mount) = match role {
            Role::Sidecar => ("1337:1337", self.image("proxy"), format!("{wd}:{wd}:ro")),
            Role::App => ("65532:65532", self.image("shop"), format!("{wd}:{wd}")),
            Role::Control => ("65532:65532", self.image("control"), format!("{wd}:{wd}")),
        };
        let mut a: Vec<String> = [
            "run",
            "--rm",
            "--pull=never",
            "--name",
            &container,
            "--network",
            &format!("ns:/run/netns/{netns}"),
            "--user",
            user,
            "--read-only",
            "--cap-drop",
            "ALL",
            "-v",
            &mount,
        ]
        .map(String::from)
        .to_vec();
        // The pod's hosts file is `ip netns exec`'s; podman writes its own /etc/hosts.
        for (service, vip) in SERVICES {
            a.push(format!("--add-host={service}:{vip}"));
        }
        // The sidecar drains on SIGTERM, which `podman run` passes on.
        a.push(image);
        a.extend(args.iter().cloned());
        a
    }

    /// The init step as its container runs it.
    pub fn init_args(&self, netns: &str) -> Vec<String> {
        [
            "run",
            "--rm",
            "--pull=never",
            "--network",
            &format!("ns:/run/netns/{netns}"),
            "--cap-drop",
            "ALL",
            "--cap-add",
            "NET_ADMIN",
            "--cap-add",
            "NET_RAW",
            &self.image("init"),
            "--inbound-ports-to-ignore",
            &HEALTH_PORT.to_string(),
        ]
        .map(String::from)
        .to_vec()
    }

    /// Removes every container started, in case one outlived its `podman run`.
    pub fn remove_all(&self) {
        if self.started.is_empty() {
            return;
        }
        let _ = std::process::Command::new("podman")
            .args(["rm", "-f", "--ignore", "--time", "5"])
            .args(&self.started)
            .output();
    }
}

/// Gives `path` (and what is under it) to `uid`, for a container that runs as it.
pub fn give_to(path: &Path, uid: u32) -> Result<(), UpError> {
    let fail = |source| UpError::Io {
        what: format!("giving {} to uid {uid}", path.display()),
        source,
    };
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).map_err(fail)?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path).map_err(fail)? {
            give_to(&entry.map_err(fail)?.path(), uid)?;
        }
    }
    Ok(())
}
