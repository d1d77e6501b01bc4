//! `outrigger-proxy`: the sidecar binary. Parses flags, builds the runtime and runs the server.

use anyhow::{bail, Context};
use clap::Parser;
use outrigger_config::{Destination, Endpoint, Protocol, ProxySettings, SidecarFile, Snapshot};
use outrigger_proxy::{server, watch};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The Outrigger sidecar proxy.
///
/// Either run from a config file (`--config`, watched for changes), or give `--listen` and
/// `--upstream` for a plain reverse proxy that sends every request to one upstream.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Static sidecar config (YAML): `proxy` settings and the `snapshot`. Changes to the
    /// snapshot apply while running; invalid changes are rejected and logged.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["listen", "upstream"])]
    config: Option<PathBuf>,

    /// Quick start: the address to accept requests on (HTTP/1.1 and h2c).
    #[arg(long, value_name = "ADDR", requires = "upstream")]
    listen: Option<SocketAddr>,

    /// Quick start: where every request goes, whatever its Host.
    #[arg(long, value_name = "ADDR", requires = "listen")]
    upstream: Option<SocketAddr>,

    /// Quick start: speak HTTP/2 (h2c) to the upstream instead of HTTP/1.1.
    #[arg(long, value_name = "PROTOCOL", default_value = "http1", value_parser = parse_protocol)]
    upstream_protocol: Protocol,

    /// Quick start: the service name used in metrics and logs.
    #[arg(long, value_name = "NAME", default_value = "outrigger")]
    service: String,

    /// Admin listener (metrics, readiness, config, stats, shutdown). Keep it on loopback.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,

    /// Worker threads; 1 runs everything on a single thread.
    #[arg(long, value_name = "N", default_value_t = default_threads())]
    threads: usize,

    /// Turn the JSON access log on stdout off.
    #[arg(long)]
    no_access_log: bool,

    /// How long shutdown waits for in-flight requests (e.g. 30s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    drain_timeout: Option<Duration>,

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

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s {
        "http1" => Ok(Protocol::Http1),
        "http2" => Ok(Protocol::Http2),
        _ => Err("expected http1 or http2".into()),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).context("--log")?)
        .with_current_span(false)
        .init();

    let (mut config, watch_src) = match (&cli.config, cli.listen, cli.upstream) {
        (Some(path), _, _) => {
            let (file, text) = watch::load(path)?;
            (file, Some((path.clone(), text)))
        }
        (None, Some(listen), Some(upstream)) => (quick_start(&cli, listen, upstream), None),
        _ => bail!("give either --config FILE, or --listen ADDR and --upstream ADDR (see --help)"),
    };
    if let Some(admin) = cli.admin {
        config.proxy.admin = admin;
    }
    if let Some(d) = cli.drain_timeout {
        config.proxy.drain_timeout = d;
    }
    if cli.no_access_log {
        config.proxy.access_log = false;
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
        config,
        watch: watch_src,
    }))?;
    // Tasks still holding connections past the drain deadline must not delay the exit.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

/// `--listen A --upstream B`: one catch-all destination, no inbound side.
fn quick_start(cli: &Cli, listen: SocketAddr, upstream: SocketAddr) -> SidecarFile {
    SidecarFile {
        proxy: ProxySettings {
            outbound: Some(listen),
            inbound: None,
            ..ProxySettings::default()
        },
        snapshot: Snapshot {
            version: 0,
            service: cli.service.clone(),
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
        },
    }
}
