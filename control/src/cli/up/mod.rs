//! `outrigger up`: the whole shop mesh on one machine with one command. It starts the control
//! plane, applies the shop's mesh resources, starts every shop service beside its own sidecar
//! (payment as two v1 instances plus a v2 canary), then plays storefront shoppers through the
//! edge sidecar and shows, per service, what the mesh sees. Ctrl-C or the end of `--duration`
//! stops every child process and exits 0.
//!
//! Secure with no flags: the control plane serves HTTPS only, `up` trusts it through the trust
//! bundle it writes (`<workdir>/data/trust-bundle.pem`), keeps the admin token to itself, gives
//! `top` and Prometheus a reader token, and gives each sidecar nothing but the trust anchors and
//! a single-use bootstrap token for its first certificate.

mod load;
pub(super) mod metrics_text;
mod pods;
mod procs;
mod prometheus;
pub(super) mod table;

use super::client::{Client, Target};
use procs::Procs;
use serde::Serialize;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use table::{Collector, Probe, Row};
use tokio::time::Instant;

/// The mesh `up` applies unless told otherwise.
const SHOP_MESH: &str = include_str!("../../../../config/examples/shop.yaml");

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Run for this long with no live view (no terminal needed), then print the summary.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Orders per second the shoppers place in total.
    #[arg(long, default_value_t = 20.0)]
    pub orders_per_sec: f64,
    /// Concurrent shoppers.
    #[arg(long, default_value_t = 8)]
    pub shoppers: usize,
    /// Share of charges the payment v2 canary fails.
    #[arg(long, default_value_t = 0.2)]
    pub canary_error_rate: f64,
    /// Mesh resources to apply (default: the built-in config/examples/shop.yaml).
    #[arg(long, value_name = "FILE")]
    pub mesh: Option<PathBuf>,
    /// Where logs and the control plane's data go (default: a new directory under /tmp).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Also write the final summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
    /// Directory with outrigger-control, outrigger-proxy and shop (default: beside this binary).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// mTLS between sidecars: strict (only mTLS), permissive (mTLS or plaintext) or off.
    #[arg(long, value_name = "MODE", default_value = "strict", value_parser = ["strict", "permissive", "off"])]
    pub mtls: String,
    /// Every sidecar exports its spans over OTLP/gRPC to this collector, e.g.
    /// http://127.0.0.1:4317.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Share of new traces the sidecars sample, 0.0 to 1.0 (a demo mesh wants every trace).
    #[arg(long, value_name = "RATIO", default_value_t = 1.0, value_parser = sampling_ratio)]
    pub trace_sampling: f64,
    /// Write Prometheus file_sd target files for the sidecars and the control plane here
    /// (what deploy/prometheus/prometheus.yml reads as targets/*.json); removed on exit.
    #[arg(long, value_name = "DIR")]
    pub prometheus_targets: Option<PathBuf>,
    /// Lifetime of the certificates the control plane issues (its `--cert-lifetime`; default
    /// its own, 24h); sidecars renew at 70 % of it.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub cert_lifetime: Option<Duration>,
    /// How long each sidecar's single-use bootstrap token stays valid (minted just before the
    /// sidecar starts).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub bootstrap_token_ttl: Duration,
    /// Run every instance in a pod of its own: a network namespace on a bridge `up` makes,
    /// with the init step's rules, the app unchanged (it calls `http://payment/…`) and its
    /// sidecar as uid 1337. Needs root. Everything made is removed on exit.
    #[arg(long)]
    pub pods: bool,
    /// With --pods: run the control plane, every app, sidecar and init step as podman
    /// containers from the images deploy/build-images.sh makes (set CONTAINERS_CONF to
    /// deploy/podman/containers.conf on a machine like the CI's), each joined to its pod.
    #[arg(long, requires = "pods")]
    pub containers: bool,
    /// The images' tag, with --containers.
    #[arg(long, value_name = "TAG", default_value = "0.1.0")]
    pub image_tag: String,
}

fn sampling_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a ratio between 0.0 and 1.0")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("{0}")]
    Proc(#[from] procs::ProcError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("the control plane refused the mesh: {0}")]
    Apply(String),
    #[error("{0}")]
    Control(String),
    #[error("cannot make a token: {0}")]
    Random(String),
    #[error("{0} exited during startup; see its log in {1}")]
    Exited(String, PathBuf),
    #[error("up --pods: {0}")]
    Pods(outrigger_control::podnet::PodNetError),
    #[error(
        "up --pods needs root: each pod is a network namespace on a bridge, with iptables rules. \
         Run it as root (sudo outrigger up --pods), or without --pods to run the mesh on loopback \
         as any user"
    )]
    PodsNeedRoot,
}

impl From<outrigger_control::podnet::PodNetError> for UpError {
    fn from(e: outrigger_control::podnet::PodNetError) -> Self {
        Self::Pods(e)
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UpError {
    let what = what.into();
    move |source| UpError::Io { what, source }
}

/// One shop process and the sidecar beside it.
struct Instance {
    service: &'static str,
    version: &'static str,
    /// Where the app listens, as its sidecar reaches it.
    app: SocketAddr,
    outbound: SocketAddr,
    inbound: SocketAddr,
    admin: SocketAddr,
    /// With `--pods`: the pod, whose health port `up` reads the app through.
    pod: Option<pods::Pod>,
}

impl Instance {
    fn id(&self, n: usize) -> String {
        format!("{}-{}-{n}", self.service, self.version)
    }
}

/// Reserves ports for the mesh. Each stays bound until the reservation is dropped, just before
/// the processes start, so no two components can be handed the same port.
///
/// They come from below the kernel's ephemeral range (which starts at 32768): a port from
/// `bind(":0")` is one any outgoing connection may take as its source port in the moment
/// between the reservation's release and the child's bind, which under load happened.
#[derive(Default)]
struct Ports {
    held: Vec<std::net::TcpListener>,
    next: u16,
}

/// The range ports are taken from.
const PORT_RANGE: std::ops::Range<u16> = 10_000..20_000;

impl Ports {
    fn take(&mut self) -> Result<SocketAddr, UpError> {
        self.take_on([127, 0, 0, 1].into())
    }

    fn take_on(&mut self, ip: std::net::IpAddr) -> Result<SocketAddr, UpError> {
        let span = PORT_RANGE.end - PORT_RANGE.start;
        if self.next == 0 {
            // Spread: two `up`s started together (consecutive pids) must not probe the same
            // ports, or one could take the other's between its release and its children's bind.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let mix = std::process::id().wrapping_mul(2_654_435_761) ^ nanos.wrapping_mul(40_503);
            self.next = (mix % u32::from(span)) as u16;
        }
        for _ in 0..span {
            let port = PORT_RANGE.start + self.next % span;
            self.next = self.next.wrapping_add(1) % span;
            if let Ok(l) = std::net::TcpListener::bind((ip, port)) {
                self.held.push(l);
                return Ok(SocketAddr::new(ip, port));
            }
        }
        Err(UpError::Io {
            what: format!("reserving a port on {ip}"),
            source: std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "every port from {} to {} is taken",
                    PORT_RANGE.start,
                    PORT_RANGE.end - 1
                ),
            ),
        })
    }
}

#[derive(Serialize)]
struct ServiceSummary {
    #[serde(flatten)]
    row: Row,
    healthy: bool,
}

#[derive(Serialize)]
struct Mtls {
    mode: String,
    /// Handshakes between sidecars, all sidecars together: they scale with connections.
    handshakes: u64,
    /// Inbound requests that arrived over mTLS and in plaintext, all sidecars together.
    mtls_requests: u64,
    plaintext_requests: u64,
    /// Certificates the sidecars got from the mesh CA (first ones and renewals), and requests
    /// for one that failed, all sidecars together.
    certificates: u64,
    certificate_errors: u64,
    /// Connections the pods' rules redirected to a sidecar that it served (`--pods`): the
    /// apps dialled services by name, not their sidecar.
    intercepted: u64,
}

#[derive(Serialize)]
struct Summary {
    /// What the shop's databases say, across runs on the same work directory.
    shop: ShopData,
    duration_secs: f64,
    /// The control plane's trust bundle: the `--trust-anchors` of anything that talks to it.
    trust_anchors: PathBuf,
    mtls: Mtls,
    orders: load::Outcome,
    browsing: load::Outcome,
    logins: load::Outcome,
    services: Vec<ServiceSummary>,
    workdir: PathBuf,
}

/// The shop's own account, from its databases (so it counts every run on the work directory).
#[derive(Debug, Default, Serialize)]
struct ShopData {
    charges_attempted: u64,
    /// Charges whose Idempotency-Key had already paid: retries answered with the first charge.
    charges_deduplicated: u64,
    charges: u64,
    orders_stored: u64,
    /// Orders whose reserved stock was released after the charge failed.
    orders_compensated: u64,
    /// Orders an order instance finished after another died mid-saga.
    orders_resumed: u64,
}

/// The files `up` keeps its credentials and the control plane's trust anchors in.
struct Secrets {
    /// The admin token: `up`'s own (apply, mint bootstrap tokens), never a sidecar's.
    admin_token: PathBuf,
    /// A reader token, for `top` and Prometheus.
    reader_token: PathBuf,
    /// `<data-dir>/trust-bundle.pem`, which the control plane writes.
    trust_anchors: PathBuf,
}

pub async fn run(args: UpArgs) -> Result<(), UpError> {
    // Before anything is made.
    if args.pods && !outrigger_control::podnet::is_root() {
        return Err(UpError::PodsNeedRoot);
    }
    let bins = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .map_err(io("finding this binary"))?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    let workdir = args.workdir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("outrigger-up-{}", std::process::id()))
    });
    // Absolute: the paths are handed to other processes (and linked from Prometheus targets).
    let workdir = std::path::absolute(&workdir).map_err(io("resolving the work directory"))?;
    let logs = workdir.join("logs");
    std::fs::create_dir_all(&logs).map_err(io(format!("creating {}", logs.display())))?;
    let secrets = Secrets {
        admin_token: workdir.join("admin.token"),
        reader_token: workdir.join("reader.token"),
        trust_anchors: workdir.join("data").join("trust-bundle.pem"),
    };
    write_secret(&secrets.admin_token, &new_token()?)?;
    write_secret(&secrets.reader_token, &new_token()?)?;
    // A bundle left by an earlier run in this work directory must not pass for this one's.
    let _ = std::fs::remove_file(&secrets.trust_anchors);
    let mesh = match &args.mesh {
        Some(p) => std::fs::read_to_string(p).map_err(io(format!("reading {}", p.display())))?,
        None => SHOP_MESH.to_string(),
    };

    // Made before any process and removed after they have all stopped (on drop), also when
    // the run fails.
    let mut pods = if args.pods {
        let containers = args.containers.then(|| pods::Containers {
            tag: args.image_tag.clone(),
            workdir: workdir.clone(),
            started: Vec::new(),
        });
        Some(pods::Pods::create(containers)?)
    } else {
        None
    };
    let mut procs = Procs::new(&logs);
    let result = run_mesh(
        &args,
        &bins,
        &workdir,
        &secrets,
        &mesh,
        &mut procs,
        pods.as_mut(),
    )
    .await;
    procs.stop(Duration::from_secs(10)).await;
    if let Some(c) = pods.as_ref().and_then(|p| p.containers.as_ref()) {
        c.remove_all();
    }
    drop(pods);
    result
}

async fn run_mesh(
    args: &UpArgs,
    bins: &Path,
    workdir: &Path,
    secrets: &Secrets,
    mesh: &str,
    procs: &mut Procs,
    mut pods: Option<&mut pods::Pods>,
) -> Result<(), UpError> {
    let logs = workdir.join("logs");
    let proxy_bin = bins.join("outrigger-proxy");
    let layout: [(&'static str, &'static str); 7] = [
        ("user", "v1"),
        ("catalog", "v1"),
        ("inventory", "v1"),
        ("payment", "v1"),
        ("payment", "v1"),
        ("payment", "v2"),
        ("order", "v1"),
    ];
    // Every port is reserved before anything starts, then released all at once.
    let mut ports = Ports::default();
    // In containers the control plane has a pod of its own (no rules: no sidecar there).
    let control_pod = match pods.as_deref_mut() {
        Some(p) if p.containers.is_some() => Some(p.pod("control", &proxy_bin, false)?),
        _ => None,
    };
    let control = match (pods.as_deref(), &control_pod) {
        (_, Some(pod)) => pod.at(15010),
        (Some(p), None) => ports.take_on(p.host_ip()?)?,
        (None, None) => ports.take()?,
    };
    let mut instances = Vec::new();
    for (n, (service, version)) in layout.into_iter().enumerate() {
        instances.push(match pods.as_deref_mut() {
            // In a pod every instance has the same ports; its address tells them apart.
            Some(p) => {
                let pod = p.pod(&format!("{service}-{n}"), &proxy_bin, true)?;
                Instance {
                    service,
                    version,
                    app: SocketAddr::from(([127, 0, 0, 1], pods::APP_PORT)),
                    outbound: SocketAddr::from(([127, 0, 0, 1], 15001)),
                    inbound: SocketAddr::from(([0, 0, 0, 0], 15006)),
                    admin: pod.at(pods::ADMIN_PORT),
                    pod: Some(pod),
                }
            }
            None => Instance {
                service,
                version,
                app: ports.take()?,
                outbound: ports.take()?,
                inbound: ports.take()?,
                admin: ports.take()?,
                pod: None,
            },
        });
    }
    // The edge. In a pod its outbound listener is on the pod's address, which the rules leave
    // alone: the shoppers on the host call it there.
    let edge_pod = match pods.as_deref_mut() {
        Some(p) => Some(p.pod("storefront", &proxy_bin, true)?),
        None => None,
    };
    let (edge, edge_admin, edge_inbound) = match &edge_pod {
        Some(pod) => (
            pod.at(15001),
            pod.at(pods::ADMIN_PORT),
            SocketAddr::from(([0, 0, 0, 0], 15006)),
        ),
        None => (ports.take()?, ports.take()?, ports.take()?),
    };
    drop(ports);

    let control_url = format!("https://{control}");
    let mut control_args = vec![
        "--listen".into(),
        control.to_string(),
        "--data-dir".into(),
        workdir.join("data").display().to_string(),
        "--token-file".into(),
        secrets.admin_token.display().to_string(),
        "--reader-token-file".into(),
        secrets.reader_token.display().to_string(),
        "--mtls".into(),
        args.mtls.clone(),
    ];
    if let Some(lifetime) = args.cert_lifetime {
        control_args.extend([
            "--cert-lifetime".into(),
            humantime::format_duration(lifetime).to_string(),
        ]);
    }
    if control_pod.is_some() {
        // The control plane's container runs as its image's uid: its data and tokens are its.
        let data = workdir.join("data");
        std::fs::create_dir_all(&data).map_err(io(format!("creating {}", data.display())))?;
        for p in [&data, &secrets.admin_token, &secrets.reader_token] {
            pods::give_to(p, pods::APP_UID)?;
        }
    }
    spawn(
        procs,
        pods.as_deref_mut(),
        control_pod.as_ref(),
        "control",
        &bins.join("outrigger-control"),
        &control_args,
        pods::Role::Control,
    )?;
    // The control plane writes its trust bundle at start; from then on, everything `up` says
    // to it goes over HTTPS that checks its certificate against that bundle.
    let anchors = secrets.trust_anchors.to_string_lossy().into_owned();
    let client = wait_for(
        procs,
        &logs,
        "the control plane (its trust bundle and /readyz over HTTPS)",
        Duration::from_secs(30),
        || async {
            let client = Client::new(&Target {
                url: &control_url,
                trust_anchors: Some(&anchors),
                token_file: Some(&secrets.admin_token),
                insecure_dev_plaintext: false,
            })
            .ok()?;
            let ready = client.send(http::Method::GET, "/readyz", None).await.ok()?;
            ready.status.is_success().then_some(client)
        },
    )
    .await?;
    client
        .send(
            http::Method::POST,
            "/v1/apply",
            Some((bytes::Bytes::from(mesh.to_string()), "application/yaml")),
        )
        .await
        .and_then(|r| r.ok())
        .map_err(|e| UpError::Apply(format!("{e:#}")))?;
    let _targets = args
        .prometheus_targets
        .as_deref()
        .map(|d| {
            prometheus::Targets::write(
                d,
                control,
                &instances,
                edge_admin,
                &prometheus::ControlAuth {
                    ca: &secrets.trust_anchors,
                    token: &secrets.reader_token,
                },
            )
        })
        .transpose()?;
    // Each sidecar proves who it is to the mesh CA once, with a single-use bootstrap token
    // minted just before it starts; its certificate does from then on. Even with `--mtls off`:
    // the sidecar's channel to the control plane is authenticated by that certificate.
    let bootstrap = |id: String, service: &'static str| {
        let client = &client;
        async move {
            let minted = super::token::mint(client, service, args.bootstrap_token_ttl, Some(1))
                .await
                .map_err(|e| {
                    UpError::Control(format!("minting a bootstrap token for {service}: {e:#}"))
                })?;
            let path = workdir.join(format!("{id}.bootstrap"));
            write_secret(&path, &minted.token)?;
            Ok::<_, UpError>(path)
        }
    };

    // One database per service, shared by its instances, kept in the work directory: a second
    // `up` with the same --workdir starts from the first's data.
    let shop_data = workdir.join("data").join("shop");
    std::fs::create_dir_all(&shop_data).map_err(io(format!("creating {}", shop_data.display())))?;
    if pods.as_deref().is_some_and(|p| p.containers.is_some()) {
        pods::give_to(&shop_data, pods::APP_UID)?;
    }
    // Sidecars in pods run as the proxy's uid, which must read the trust anchors: a copy, as
    // the data directory is the control plane's alone.
    let trust_anchors = if pods.is_some() {
        let copy = workdir.join("trust-bundle.pem");
        std::fs::copy(&secrets.trust_anchors, &copy).map_err(io(format!(
            "copying the trust bundle to {}",
            copy.display()
        )))?;
        // Public certificates: readable by the proxy's uid, whatever the original's mode.
        std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .map_err(io(format!("making {} readable", copy.display())))?;
        copy
    } else {
        secrets.trust_anchors.clone()
    };
    for (n, i) in instances.iter().enumerate() {
        let listen = match &i.pod {
            Some(_) => SocketAddr::from(([0, 0, 0, 0], pods::APP_PORT)),
            None => i.app,
        };
        let mut app_args = vec![i.service.to_string(), "--listen".into(), listen.to_string()];
        app_args.extend([
            "--db".into(),
            shop_data
                .join(format!("{}.db", i.service))
                .display()
                .to_string(),
        ]);
        if i.service == "payment" {
            app_args.extend(["--version".into(), i.version.to_string()]);
            if i.version == "v2" {
                app_args.extend(["--error-rate".into(), args.canary_error_rate.to_string()]);
            }
        }
        if i.service == "order" {
            // In a pod the app is unchanged: it calls `http://catalog/…` by name.
            let mesh = match &i.pod {
                Some(_) => "direct".to_string(),
                None => format!("http://{}", i.outbound),
            };
            app_args.extend(["--mesh".into(), mesh]);
        }
        spawn(
            procs,
            pods.as_deref_mut(),
            i.pod.as_ref(),
            &i.id(n),
            &bins.join("shop"),
            &app_args,
            pods::Role::App,
        )?;
        let token = bootstrap(i.id(n), i.service).await?;
        let mut sidecar = sidecar_args(
            args,
            &control_url,
            &trust_anchors,
            &token,
            i.service,
            i.version,
            &i.id(n),
            Some(i.app),
            i.outbound,
            i.inbound,
            i.admin,
        );
        if let Some(pod) = &i.pod {
            pods::give_to_proxy(&token)?;
            sidecar.extend(pods::sidecar_flags(pod.ip));
        }
        spawn(
            procs,
            pods.as_deref_mut(),
            i.pod.as_ref(),
            &format!("{}-sidecar", i.id(n)),
            &proxy_bin,
            &sidecar,
            pods::Role::Sidecar,
        )?;
    }
    // The edge: the shoppers' own sidecar, with no app and nothing inbound.
    let token = bootstrap("storefront".into(), "storefront").await?;
    if edge_pod.is_some() {
        pods::give_to_proxy(&token)?;
    }
    let edge_args = sidecar_args(
        args,
        &control_url,
        &trust_anchors,
        &token,
        "storefront",
        "v1",
        "storefront",
        None,
        edge,
        edge_inbound,
        edge_admin,
    );
    spawn(
        procs,
        pods.as_deref_mut(),
        edge_pod.as_ref(),
        "storefront-sidecar",
        &proxy_bin,
        &edge_args,
        pods::Role::Sidecar,
    )?;

    let order_admin = instances
        .iter()
        .find(|i| i.service == "order")
        .map(|i| i.admin)
        .unwrap_or(edge_admin);
    let mut admins: Vec<SocketAddr> = instances.iter().map(|i| i.admin).collect();
    admins.push(edge_admin);
    let probe = Collector::new(Vec::new());
    wait_for(
        procs,
        &logs,
        "every sidecar to be ready",
        Duration::from_secs(60),
        || async {
            for a in &admins {
                probe.get(*a, "/ready").await?;
            }
            Some(())
        },
    )
    .await?;
    // Ready means a snapshot arrived; wait until it holds every instance's endpoint.
    wait_for(
        procs,
        &logs,
        "every endpoint to be registered",
        Duration::from_secs(60),
        || async {
            (endpoints(&probe, edge_admin, &["user", "catalog", "order"]).await >= 3
                && endpoints(&probe, order_admin, &["catalog", "inventory", "payment"]).await >= 5)
                .then_some(())
        },
    )
    .await?;

    let live = args.duration.is_none() && std::io::stdout().is_terminal();
    println!(
        "mesh up: control plane {control_url}, {} services + sidecars, edge sidecar {edge}; logs in {}",
        instances.len(),
        logs.display()
    );
    println!(
        "trust anchors: {} (e.g. outrigger --control-plane {control_url} --trust-anchors {} \
         --token-file {} top)",
        secrets.trust_anchors.display(),
        secrets.trust_anchors.display(),
        secrets.reader_token.display()
    );
    println!(
        "mTLS: {} between sidecars (identities from the control plane's CA)",
        args.mtls
    );
    if pods.is_some() {
        println!(
            "pods: each instance in a network namespace on bridge {} with interception; apps call \
             http://SERVICE/ unchanged; sidecars as uid {}",
            pods.as_deref().map_or("", |p| p.bridge()),
            pods::PROXY_UID
        );
        if args.containers {
            println!(
                "containers: every process is a podman container from localhost/outrigger-*:{}",
                args.image_tag
            );
        }
    }
    println!(
        "shoppers: {} placing {:.0} orders/s; payment v2 canary fails {:.0}% of charges{}",
        args.shoppers,
        args.orders_per_sec,
        args.canary_error_rate * 100.0,
        if live { "; Ctrl-C to stop" } else { "" }
    );

    let started = Instant::now();
    let until = started
        + args
            .duration
            .unwrap_or(Duration::from_secs(365 * 24 * 3600));
    let counters = Arc::new(load::Counters::default());
    let mut shoppers = tokio::spawn(load::run(
        edge,
        args.shoppers,
        args.orders_per_sec,
        until,
        counters.clone(),
    ));
    let mut collector = Collector::new(collector_probes(edge_admin, order_admin));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = &mut shoppers => break,
            _ = tick.tick() => {
                if live {
                    let rows = collector.collect().await;
                    let o = counters.orders();
                    print!("\x1b[2J\x1b[H{}\norders: {} ok, {} failed ({:.2}% success)   elapsed {:.0}s\n",
                        table::render(&rows), o.succeeded, o.failed, o.success_rate * 100.0, started.elapsed().as_secs_f64());
                }
            }
        }
    }
    shoppers.abort();
    let elapsed = started.elapsed();

    // The summary: rates over the whole run, percentiles over the stats window.
    let mut final_rows = Collector::new(collector_probes(edge_admin, order_admin))
        .collect()
        .await;
    for r in final_rows.iter_mut() {
        r.rps = r.requests as f64 / elapsed.as_secs_f64().max(1e-3);
    }
    let mut services = Vec::new();
    for row in final_rows {
        let mut healthy = true;
        for i in instances.iter().filter(|i| i.service == row.service) {
            let app = match &i.pod {
                Some(pod) => {
                    probe
                        .get(pod.at(pods::HEALTH_PORT), pods::READY_PROBE)
                        .await
                }
                None => probe.get(i.app, "/healthz").await,
            };
            healthy &= app.is_some() && probe.get(i.admin, "/ready").await.is_some();
        }
        services.push(ServiceSummary { row, healthy });
    }
    let mut m = Mtls {
        mode: args.mtls.clone(),
        handshakes: 0,
        mtls_requests: 0,
        plaintext_requests: 0,
        certificates: 0,
        certificate_errors: 0,
        intercepted: 0,
    };
    for a in &admins {
        if let Some(text) = probe.get(*a, "/metrics").await {
            let text = String::from_utf8_lossy(&text);
            m.handshakes += metrics_text::sum(
                &text,
                "outrigger_tls_handshakes_total",
                &[("direction", "outbound"), ("result", "ok")],
            ) as u64;
            m.mtls_requests += metrics_text::sum(
                &text,
                "outrigger_inbound_requests_by_security_total",
                &[("security", "mtls")],
            ) as u64;
            m.plaintext_requests += metrics_text::sum(
                &text,
                "outrigger_inbound_requests_by_security_total",
                &[("security", "plaintext")],
            ) as u64;
            m.certificates += metrics_text::sum(
                &text,
                "outrigger_identity_renewals_total",
                &[("result", "ok")],
            ) as u64;
            m.certificate_errors += metrics_text::sum(
                &text,
                "outrigger_identity_renewals_total",
                &[("result", "error")],
            ) as u64;
            m.intercepted += metrics_text::sum(
                &text,
                "outrigger_intercepted_connections_total",
                &[("outcome", "routed")],
            ) as u64;
        }
    }
    // Service-wide counts from the shop's own databases, through any instance's admin route.
    let mut shop = ShopData::default();
    let stat = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    let stats = |i: &Instance| {
        let probe = &probe;
        let at = match &i.pod {
            Some(pod) => (pod.at(pods::HEALTH_PORT), pods::STATS_PROBE),
            None => (i.app, "/admin/stats"),
        };
        async move { probe.get(at.0, at.1).await }
    };
    if let Some(p) = instances.iter().find(|i| i.service == "payment") {
        if let Some(body) = stats(p).await {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            shop.charges_attempted = stat(&v, "charges_attempted");
            shop.charges_deduplicated = stat(&v, "charges_deduplicated");
            shop.charges = stat(&v, "charges");
        }
    }
    if let Some(o) = instances.iter().find(|i| i.service == "order") {
        if let Some(body) = stats(o).await {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            shop.orders_stored = stat(&v, "orders");
            shop.orders_compensated = stat(&v, "compensated");
            shop.orders_resumed = stat(&v, "resumed");
        }
    }
    let summary = Summary {
        shop,
        duration_secs: elapsed.as_secs_f64(),
        trust_anchors: secrets.trust_anchors.clone(),
        mtls: m,
        orders: counters.orders(),
        browsing: counters.browsing(),
        logins: counters.logins(),
        services,
        workdir: workdir.to_path_buf(),
    };
    print_summary(&summary);
    if let Some(p) = &args.summary_json {
        let json = serde_json::to_string_pretty(&summary).unwrap_or_default();
        std::fs::write(p, json).map_err(io(format!("writing {}", p.display())))?;
    }
    Ok(())
}

/// Starts `bin args`, in `pod` when there is one (a sidecar as the proxy's uid; a container
/// with --containers).
fn spawn(
    procs: &mut Procs,
    pods: Option<&mut pods::Pods>,
    pod: Option<&pods::Pod>,
    name: &str,
    bin: &Path,
    args: &[String],
    role: pods::Role,
) -> Result<(), UpError> {
    match (pods, pod) {
        (Some(pods), Some(pod)) => {
            let (program, args) = pods.command(pod, name, bin, args, role);
            procs.spawn(name, &program, &args)?
        }
        _ => procs.spawn(name, bin, args)?,
    }
    Ok(())
}

/// Each service as its callers see it: the edge calls user, catalog and order; order calls
/// inventory and payment.
fn collector_probes(edge_admin: SocketAddr, order_admin: SocketAddr) -> Vec<Probe> {
    [
        ("user", edge_admin),
        ("catalog", edge_admin),
        ("order", edge_admin),
        ("inventory", order_admin),
        ("payment", order_admin),
    ]
    .into_iter()
    .map(|(s, a)| Probe {
        service: s.to_string(),
        caller_admin: a,
    })
    .collect()
}

#[allow(clippy::too_many_arguments)]
fn sidecar_args(
    up: &UpArgs,
    control: &str,
    trust_anchors: &Path,
    bootstrap_token: &Path,
    service: &str,
    version: &str,
    id: &str,
    app: Option<SocketAddr>,
    outbound: SocketAddr,
    inbound: SocketAddr,
    admin: SocketAddr,
) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--control-plane".into(),
        control.into(),
        "--service".into(),
        service.into(),
        "--service-version".into(),
        version.into(),
        "--sidecar-id".into(),
        id.into(),
        "--trust-anchors".into(),
        trust_anchors.display().to_string(),
        "--bootstrap-token-file".into(),
        bootstrap_token.display().to_string(),
        "--outbound".into(),
        outbound.to_string(),
        "--inbound".into(),
        inbound.to_string(),
        "--admin".into(),
        admin.to_string(),
        "--threads".into(),
        "1".into(),
    ];
    if let Some(app) = app {
        a.extend(["--app".into(), app.to_string()]);
    }
    // Sampling applies without an exporter too: it decides the flags sent downstream.
    a.extend(["--trace-sampling".into(), up.trace_sampling.to_string()]);
    if let Some(endpoint) = &up.otlp_endpoint {
        a.extend(["--otlp-endpoint".into(), endpoint.clone()]);
    }
    a
}

/// How many endpoints a sidecar's applied snapshot has for these destinations, in total;
/// 0 for a destination that has none (so a caller can insist on each).
async fn endpoints(probe: &Collector, admin: SocketAddr, dests: &[&str]) -> usize {
    let Some(body) = probe.get(admin, "/config").await else {
        return 0;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return 0;
    };
    let Some(list) = v["snapshot"]["destinations"].as_array() else {
        return 0;
    };
    let mut total = 0;
    for d in dests {
        let n = list
            .iter()
            .find(|x| x["name"] == *d)
            .and_then(|x| x["endpoints"].as_array())
            .map_or(0, Vec::len);
        if n == 0 {
            return 0;
        }
        total += n;
    }
    total
}

/// Polls `check` until it gives a value; fails when a child exits or `within` passes.
async fn wait_for<T, F, Fut>(
    procs: &mut Procs,
    logs: &Path,
    what: &str,
    within: Duration,
    mut check: F,
) -> Result<T, UpError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if let Some(name) = procs.exited().into_iter().next() {
            return Err(UpError::Exited(name, logs.to_path_buf()));
        }
        if Instant::now() > deadline {
            return Err(UpError::Timeout(what.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A fresh operator token: 256 bits from the OS, in hex.
fn new_token() -> Result<String, UpError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| UpError::Random(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn write_secret(path: &Path, secret: &str) -> Result<(), UpError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("writing {}", path.display())))?;
    f.write_all(secret.as_bytes())
        .map_err(io(format!("writing {}", path.display())))
}

/// Resolves on Ctrl-C, SIGTERM or SIGHUP (a dropped SSH session, a closed terminal): each
/// is a graceful stop.
pub(super) async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let on = |kind: SignalKind| async move {
        match signal(kind) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = on(SignalKind::terminate()) => {}
        _ = on(SignalKind::hangup()) => {}
    }
}

fn print_summary(s: &Summary) {
    let rows: Vec<Row> = s.services.iter().map(|x| x.row.clone()).collect();
    println!(
        "\nsummary after {:.1}s (rates over the run, percentiles over the last 60 s):",
        s.duration_secs
    );
    print!("{}", table::render(&rows));
    for x in &s.services {
        if !x.healthy {
            println!("UNHEALTHY: {}", x.row.service);
        }
    }
    println!(
        "orders: {} ok, {} failed ({:.2}% success); browsing {:.2}%, logins {:.2}%",
        s.orders.succeeded,
        s.orders.failed,
        s.orders.success_rate * 100.0,
        s.browsing.success_rate * 100.0,
        s.logins.success_rate * 100.0
    );
    println!(
        "mTLS: {}; {} inbound requests over mTLS, {} in plaintext; {} handshakes between sidecars; \
         {} certificates issued to sidecars ({} requests failed)",
        s.mtls.mode,
        s.mtls.mtls_requests,
        s.mtls.plaintext_requests,
        s.mtls.handshakes,
        s.mtls.certificates,
        s.mtls.certificate_errors
    );
    if s.mtls.intercepted > 0 {
        println!(
            "interception: {} connections the apps made by name were taken to their sidecars",
            s.mtls.intercepted
        );
    }
    println!(
        "shop data ({}): {} charges attempted, {} deduplicated, {} charges; {} orders stored, \
         {} compensated, {} resumed after a crash",
        s.workdir.join("data").join("shop").display(),
        s.shop.charges_attempted,
        s.shop.charges_deduplicated,
        s.shop.charges,
        s.shop.orders_stored,
        s.shop.orders_compensated,
        s.shop.orders_resumed
    );
    println!("logs: {}", s.workdir.join("logs").display());
    println!("trust anchors: {}", s.trust_anchors.display());
}
