//! `outrigger-proxy`: the sidecar binary. Parses flags, builds the runtime and runs the server.

use anyhow::{bail, Context};
use clap::Parser;
use outrigger_config::snapshot::EndpointAddress;
use outrigger_config::{Destination, Endpoint, Protocol, ProxySettings, SidecarFile, Snapshot};
use outrigger_proxy::control_plane::channel::{self, Channel, ChannelFlags};
use outrigger_proxy::control_plane::secret::Secret;
use outrigger_proxy::control_plane::ControlPlane;
use outrigger_proxy::server::{self, Source};
use outrigger_proxy::watch;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// mimalloc instead of glibc's malloc: allocation and free were 6–8 % of the proxy's CPU per
/// request under load (see bench/RESULTS.md). Built without transparent huge pages: with them
/// its first arena alone made the idle proxy 15 MiB instead of 7.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Outrigger sidecar proxy.
///
/// Three ways to run: from a config file (`--config`, watched for changes); fed by the control
/// plane (`--control-plane https://… --trust-anchors FILE --bootstrap-token-file FILE --service
/// NAME --app ADDR`); or as a plain reverse proxy that sends every request to one upstream
/// (`--listen ADDR --upstream ADDR`).
#[derive(Debug, Parser)]
#[command(version, about, long_about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Static sidecar config (YAML): `proxy` settings and the `snapshot`. Changes to the
    /// snapshot apply while running; invalid changes are rejected and logged.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["listen", "upstream", "control_plane"])]
    config: Option<PathBuf>,

    /// With --config: check the file offline (every field, with its path, line and column, as
    /// at a reload), print what it holds, and exit: 0 if valid, 1 if not. Starts nothing.
    #[arg(long, requires = "config")]
    check: bool,

    /// Control plane mode: subscribe to this control plane (e.g. https://127.0.0.1:15010, or
    /// https://control.mesh:15010: a host name is resolved on each connect and is the name its
    /// certificate must carry) for `--service`'s snapshots, and register this instance. Not ready
    /// before the first snapshot. Must be https:// (see --insecure-dev-plaintext).
    #[arg(long, value_name = "URL", requires = "service", conflicts_with_all = ["listen", "upstream"])]
    control_plane: Option<http::Uri>,

    /// Control plane mode: the roots the control plane's certificate must chain to (its
    /// `<data-dir>/trust-bundle.pem`). Also OUTRIGGER_TRUST_ANCHORS, which may hold the PEM
    /// text itself. Required for https.
    #[arg(
        long,
        value_name = "FILE",
        env = "OUTRIGGER_TRUST_ANCHORS",
        hide_env_values = true
    )]
    trust_anchors: Option<String>,

    /// DEVELOPMENT ONLY: allow an http:// control plane. Certificates, config and tokens then
    /// cross the network unprotected, and an operator token (--token-file) is accepted.
    #[arg(long)]
    insecure_dev_plaintext: bool,

    /// Control plane mode: the local app this sidecar fronts (inbound requests go there):
    /// IP:PORT, or NAME:PORT for a DNS name, resolved in the background and every 5 s.
    #[arg(long, value_name = "ADDR")]
    app: Option<EndpointAddress>,

    /// Control plane mode: this instance's version (the canary label, e.g. v2).
    #[arg(long, value_name = "VERSION", default_value = "v1")]
    service_version: String,

    /// Control plane mode: outbound listener.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15001")]
    outbound: SocketAddr,

    /// Control plane mode: inbound listener.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:15006")]
    inbound: SocketAddr,

    /// Control plane mode: the address other sidecars reach this one on (default: the inbound
    /// listener; for an unspecified IP such as 0.0.0.0, the address of the interface the
    /// control-plane connection leaves from, else 127.0.0.1 with a warning).
    #[arg(long, value_name = "ADDR")]
    advertise: Option<SocketAddr>,

    /// Control plane mode: do not register this instance in the registry.
    #[arg(long)]
    no_register: bool,

    /// Control plane mode: this sidecar's id in sync status (default: service-pid).
    #[arg(long, value_name = "ID")]
    sidecar_id: Option<String>,

    /// Only with --insecure-dev-plaintext: file holding an operator token (or the
    /// OUTRIGGER_TOKEN environment variable), sent as bearer on every call, and used for the
    /// workload certificate when no bootstrap token is given (the sidecar is not ready until it
    /// holds one). Refused with https: sidecars never hold operator tokens.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// Control plane mode: file holding this workload's bootstrap token (or
    /// OUTRIGGER_BOOTSTRAP_TOKEN), spent on the first certificate; renewals present the
    /// certificate instead. Required for https. The sidecar speaks mTLS to other sidecars and
    /// is not ready until it holds a certificate.
    #[arg(long, value_name = "FILE")]
    bootstrap_token_file: Option<PathBuf>,

    /// Control plane mode: the mesh's trust domain (identities are spiffe://DOMAIN/service/NAME).
    #[arg(long, value_name = "DOMAIN", default_value = outrigger_config::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,

    /// Quick start: the address to accept requests on (HTTP/1.1 and h2c).
    #[arg(long, value_name = "ADDR", requires = "upstream")]
    listen: Option<SocketAddr>,

    /// Quick start: where every request goes, whatever its Host: IP:PORT, or NAME:PORT for a
    /// DNS name, resolved in the background and every 5 s (each address is an endpoint).
    #[arg(long, value_name = "ADDR", requires = "listen")]
    upstream: Option<EndpointAddress>,

    /// Quick start: speak HTTP/2 (h2c) to the upstream instead of HTTP/1.1.
    #[arg(long, value_name = "PROTOCOL", default_value = "http1", value_parser = parse_protocol)]
    upstream_protocol: Protocol,

    /// The service this sidecar runs beside (quick start default: `outrigger`).
    #[arg(long, value_name = "NAME")]
    service: Option<String>,

    /// Admin listener (metrics, readiness, config, stats, shutdown). Keep it on loopback.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,

    /// Health listener for the kubelet's probes and Prometheus, reachable from outside the pod
    /// while the admin stays on loopback (e.g. 0.0.0.0:15021): GET /live, /ready, /metrics and
    /// the app's own probes under /app-health/ (see --app-probes). Read-only.
    #[arg(long, value_name = "ADDR")]
    health: Option<SocketAddr>,

    /// The app's HTTP probes the health listener makes for the kubelet, as JSON:
    /// {"/app-health/CONTAINER/readyz": {"port": 8080, "path": "/healthz"}, …}. Written by
    /// `outrigger inject`, which points the app's probes at the health port, because under
    /// interception a probe to the app's port would meet strict mTLS.
    #[arg(long, value_name = "JSON", env = "OUTRIGGER_APP_PROBES")]
    app_probes: Option<String>,

    /// Worker threads; 1 runs everything on a single thread.
    #[arg(long, value_name = "N", default_value_t = default_threads())]
    threads: usize,

    /// Turn the JSON access log on stdout off.
    #[arg(long)]
    no_access_log: bool,

    /// How long shutdown waits for in-flight requests (e.g. 30s; at most a day).
    #[arg(long, value_name = "DURATION", value_parser = drain_timeout)]
    drain_timeout: Option<Duration>,

    /// Export spans over OTLP/gRPC to this collector (e.g. http://127.0.0.1:4317).
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,

    /// Share of new traces to sample, 0.0 to 1.0 (default 0.01). A sampling decision that
    /// arrives with a request is always respected.
    #[arg(long, value_name = "RATIO")]
    trace_sampling: Option<f64>,

    /// Also send B3 multi-headers upstream, for apps that only read B3.
    #[arg(long)]
    trace_b3: bool,

    /// Log filter for the proxy's own JSON logs on stderr (e.g. info, debug).
    #[arg(
        long,
        value_name = "FILTER",
        env = "OUTRIGGER_LOG",
        default_value = "info"
    )]
    log: String,
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// The same bound as `proxy.drain_timeout` in a config file: a deadline past it could overflow.
fn drain_timeout(s: &str) -> Result<Duration, String> {
    use outrigger_config::duration::{display, Family};
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d > Family::Timeout.max() {
        return Err(format!(
            "must be at most {}",
            display(Family::Timeout.max())
        ));
    }
    Ok(d)
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s {
        "http1" => Ok(Protocol::Http1),
        "http2" => Ok(Protocol::Http2),
        _ => Err("expected http1 or http2".into()),
    }
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Program this network namespace (a pod's) so every TCP connection in or out goes
    /// through the sidecar: run once, as root, before the app starts (the init container).
    Init(outrigger_proxy::init::InitArgs),
    /// Wait until the sidecar is ready; then run COMMAND (after `--`) and, with --shutdown,
    /// end the sidecar when it is done (a Job without native sidecars). Exits with COMMAND's
    /// status.
    Await(outrigger_proxy::await_sidecar::AwaitArgs),
    /// Copy this binary to DEST (mode 0755), e.g. into an emptyDir an app container shares,
    /// for images with no `cp`.
    CopySelf {
        #[arg(value_name = "DEST")]
        dest: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    outrigger_config::lifeline::die_with_parent()?;
    let mut cli = Cli::parse();
    match &cli.command {
        Some(Command::Init(args)) => return outrigger_proxy::init::run(args).context("init"),
        Some(Command::CopySelf { dest }) => {
            return Ok(outrigger_proxy::await_sidecar::copy_self(dest)?)
        }
        Some(Command::Await(_)) => {
            let Some(Command::Await(args)) = cli.command.take() else {
                return Ok(());
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let code = runtime.block_on(outrigger_proxy::await_sidecar::run(args))?;
            std::process::exit(code);
        }
        None => {}
    }
    if let (true, Some(path)) = (cli.check, &cli.config) {
        return match watch::load(path) {
            Ok((file, _)) => {
                println!(
                    "{}: valid: service {}, {} destination(s), inbound {}",
                    path.display(),
                    file.snapshot.service,
                    file.snapshot.destinations.len(),
                    if file.snapshot.inbound.is_some() {
                        "on"
                    } else {
                        "off"
                    }
                );
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        };
    }
    // Held to the end of main: dropping it flushes the queued log lines.
    let _log = outrigger_proxy::logging::init(&cli.log).context("--log")?;

    let (mut settings, source) = match (&cli.config, &cli.control_plane, cli.listen, cli.upstream.clone()) {
        (Some(path), _, _, _) => {
            let (file, text) = watch::load(path)?;
            let source = Source::Static { snapshot: Box::new(file.snapshot), watch: Some((path.clone(), text)) };
            (file.proxy, source)
        }
        (None, Some(url), _, _) => control_plane_mode(&cli, url.clone())?,
        (None, None, Some(listen), Some(upstream)) => {
            let file = quick_start(&cli, listen, upstream);
            (file.proxy, Source::Static { snapshot: Box::new(file.snapshot), watch: None })
        }
        _ => bail!(
            "give --config FILE, or --control-plane URL --service NAME, or --listen ADDR --upstream ADDR (see --help)"
        ),
    };
    if let Some(admin) = cli.admin {
        settings.admin = admin;
    }
    if let Some(h) = cli.health {
        settings.health = Some(h);
    }
    let app_probes = match cli.app_probes.as_deref().map(str::trim) {
        Some(json) if !json.is_empty() => {
            outrigger_proxy::health::app_probe::AppProbes::parse(json).context("--app-probes")?
        }
        _ => Default::default(),
    };
    if let Some(d) = cli.drain_timeout {
        settings.drain_timeout = d;
    }
    if cli.no_access_log {
        settings.access_log = false;
    }
    if let Some(e) = &cli.otlp_endpoint {
        if let Err(reason) = outrigger_config::TracingSettings::check_endpoint(e) {
            bail!("--otlp-endpoint {e}: {reason}");
        }
        settings.tracing.otlp_endpoint = Some(e.clone());
    }
    if let Some(r) = cli.trace_sampling {
        if !(0.0..=1.0).contains(&r) {
            bail!("--trace-sampling must be between 0.0 and 1.0");
        }
        settings.tracing.sampling = r;
    }
    if cli.trace_b3 {
        settings.tracing.b3 = true;
    }

    let threads = cli.threads.max(1);
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(server::run(server::Options {
        settings,
        source,
        app_probes,
    }))?;
    // Tasks still holding connections past the drain deadline must not delay the exit.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

/// A secret from the file a flag names, else from an environment variable; never logged.
fn secret(file: Option<&std::path::Path>, flag: &str, env: &str) -> anyhow::Result<Option<Secret>> {
    Ok(match file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading {flag} {}", f.display()))?;
            let token = text.trim();
            if token.is_empty() {
                bail!("{flag} {} is empty", f.display());
            }
            Some(Secret::new(token))
        }
        None => std::env::var(env)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .map(Secret::new),
    })
}

/// `--control-plane URL`: listeners from flags, snapshots from the control plane.
fn control_plane_mode(cli: &Cli, url: http::Uri) -> anyhow::Result<(ProxySettings, Source)> {
    let service = cli
        .service
        .clone()
        .context("--control-plane needs --service")?;
    let flags = ChannelFlags {
        insecure_dev_plaintext: cli.insecure_dev_plaintext,
        trust_anchors: cli.trust_anchors.clone(),
        bootstrap_token: secret(
            cli.bootstrap_token_file.as_deref(),
            "--bootstrap-token-file",
            "OUTRIGGER_BOOTSTRAP_TOKEN",
        )?,
        operator_token: secret(cli.token_file.as_deref(), "--token-file", "OUTRIGGER_TOKEN")?,
    };
    let channel = channel::validate(&url, flags)?;
    if let Channel::Plaintext { .. } = &channel {
        tracing::warn!(
            control_plane = %url,
            "--insecure-dev-plaintext: the control channel is PLAINTEXT; certificates, config and tokens cross the network unprotected and anyone on the path can impersonate the control plane. Development only."
        );
    }
    let advertise = (!cli.no_register && cli.app.is_some()).then(|| {
        cli.advertise
            .unwrap_or_else(|| outrigger_proxy::control_plane::advertise::choose(cli.inbound, &url))
    });
    let cp = ControlPlane {
        url,
        sidecar_id: cli
            .sidecar_id
            .clone()
            .unwrap_or_else(|| format!("{service}-{}", std::process::id())),
        service,
        version: cli.service_version.clone(),
        channel,
        app: cli.app.clone(),
        advertise,
        // Known once the admin listener is bound.
        admin: None,
        trust_domain: cli.trust_domain.clone(),
    };
    let settings = ProxySettings {
        outbound: Some(cli.outbound),
        inbound: cli.app.as_ref().map(|_| cli.inbound),
        ..ProxySettings::default()
    };
    Ok((settings, Source::ControlPlane(Box::new(cp))))
}

/// `--listen A --upstream B`: one catch-all destination, no inbound side.
fn quick_start(cli: &Cli, listen: SocketAddr, upstream: EndpointAddress) -> SidecarFile {
    SidecarFile {
        proxy: ProxySettings {
            outbound: Some(listen),
            inbound: None,
            ..ProxySettings::default()
        },
        snapshot: Snapshot {
            version: 0,
            service: cli.service.clone().unwrap_or_else(|| "outrigger".into()),
            inbound: None,
            destinations: vec![Destination {
                hosts: vec!["*".into()],
                protocol: cli.upstream_protocol,
                endpoints: vec![Endpoint {
                    address: upstream,
                    version: "v1".into(),
                    labels: Default::default(),
                }],
                ..Destination::new("upstream")
            }],
            mtls: Default::default(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_and_app_take_a_dns_name_or_an_ip() {
        let cli = Cli::try_parse_from([
            "outrigger-proxy",
            "--listen",
            "127.0.0.1:15001",
            "--upstream",
            "LocalHost:8080",
        ])
        .expect("a name is an address");
        assert_eq!(
            cli.upstream.as_ref().map(|u| u.to_string()).as_deref(),
            Some("localhost:8080")
        );
        let file = quick_start(
            &cli,
            "127.0.0.1:15001".parse().expect("listen"),
            "localhost:8080".parse().expect("upstream"),
        );
        let address = &file.snapshot.destinations[0].endpoints[0].address;
        assert_eq!(address.name().map(|n| n.host.as_str()), Some("localhost"));

        let cli = Cli::try_parse_from([
            "outrigger-proxy",
            "--control-plane",
            "https://cp:1",
            "--service",
            "a",
            "--app",
            "[::1]:8080",
        ])
        .expect("an IP literal stays one");
        assert_eq!(
            cli.app.and_then(|a| a.ip()),
            Some("[::1]:8080".parse().expect("ip"))
        );

        let e = Cli::try_parse_from([
            "outrigger-proxy",
            "--listen",
            "127.0.0.1:15001",
            "--upstream",
            "my_app:8080",
        ])
        .expect_err("not a host name");
        assert!(e.to_string().contains("is not a DNS name"), "{e}");
    }

    #[test]
    fn a_drain_timeout_of_centuries_is_refused_at_the_flag() {
        assert_eq!(
            super::drain_timeout("30s"),
            Ok(std::time::Duration::from_secs(30))
        );
        assert!(super::drain_timeout("1day").is_ok());
        assert_eq!(
            super::drain_timeout("300years").err().as_deref(),
            Some("must be at most 1day")
        );
        assert!(super::drain_timeout("soon").is_err());
    }
}
