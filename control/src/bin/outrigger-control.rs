//! `outrigger-control`: the control plane binary. Flags, token, logging and signals; the
//! rest is the library's `server::run`.
#![forbid(unsafe_code)]

use anyhow::{bail, Context};
use clap::Parser;
use outrigger_config::{MtlsMode, DEFAULT_TRUST_DOMAIN};
use outrigger_control::auth::Token;
use outrigger_control::ca::check_trust_domain;
use outrigger_control::server::{self, Options};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The Outrigger control plane: mesh resources, service registry, the mesh CA and config push,
/// served over HTTPS with a certificate from its own CA.
///
/// Operators authenticate with bearer tokens: the admin token (--token-file or
/// OUTRIGGER_TOKEN) may do everything, a reader token (--reader-token-file or
/// OUTRIGGER_READER_TOKEN) may only read. Sidecars authenticate with their workload
/// certificates. The trust bundle to hand out as the trust anchors is written to
/// <DATA_DIR>/trust-bundle.pem.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Address of the REST API and push streams (port 0 picks a free port; see the log).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15010")]
    listen: SocketAddr,

    /// Where the store lives (created if missing).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,

    /// File holding the admin token (may do everything).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// File holding a reader token (GETs only: `outrigger get`, `top`, Prometheus).
    #[arg(long, value_name = "FILE")]
    reader_token_file: Option<PathBuf>,

    /// A DNS name or IP the serving certificate carries, for the address clients dial;
    /// repeat for several (default: localhost, 127.0.0.1, ::1 and the --listen IP).
    #[arg(long = "server-name", value_name = "NAME")]
    server_names: Vec<String>,

    /// Where to write the trust bundle, the trust anchors operators hand to sidecars and CLIs
    /// (default: <DATA_DIR>/trust-bundle.pem). Rewritten whenever the roots change.
    #[arg(long, value_name = "FILE")]
    trust_bundle_out: Option<PathBuf>,

    /// DEVELOPMENT ONLY, INSECURE: serve plain HTTP. Tokens then cross the network in the
    /// clear, and nothing proves to sidecars or CLIs that this is the real control plane.
    #[arg(long)]
    insecure_dev_plaintext: bool,

    /// SPIFFE trust domain: sidecars' identities are spiffe://<TRUST_DOMAIN>/service/<name>.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_TRUST_DOMAIN, value_parser = trust_domain)]
    trust_domain: String,

    /// Lifetime of the sidecars' certificates (sidecars renew at about 70 %).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = lifetime)]
    cert_lifetime: Duration,

    /// mTLS mode pushed to the sidecars: strict (mTLS only), permissive (mTLS or plaintext
    /// inbound), off.
    #[arg(long, value_name = "MODE", default_value = "strict", value_parser = mode)]
    mtls: MtlsMode,

    /// The root CA's certificate (PEM), instead of one the control plane makes under
    /// <DATA_DIR>/ca on first start. Needs --ca-key.
    #[arg(long, value_name = "FILE", requires = "ca_key")]
    ca_cert: Option<PathBuf>,

    /// The root CA's private key (PEM, mode 0600). Needs --ca-cert.
    #[arg(long, value_name = "FILE", requires = "ca_cert")]
    ca_key: Option<PathBuf>,

    /// Time between keepalive lines on push streams.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration, hide = true)]
    keepalive: Duration,

    /// Connections open at once; a new one beyond this is closed at accept.
    #[arg(long, value_name = "N", default_value_t = server::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,

    /// A connection whose next request head is not complete by then is closed (slowloris).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    header_read_timeout: Duration,

    /// Largest request body on every route but /v1/apply (which takes up to 32 MiB).
    #[arg(long, value_name = "BYTES", default_value_t = server::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,

    /// Log filter for the JSON logs on stderr (e.g. info, debug).
    #[arg(
        long,
        value_name = "FILTER",
        env = "OUTRIGGER_LOG",
        default_value = "info"
    )]
    log: String,
}

fn token(cli: &Cli) -> anyhow::Result<Token> {
    let text = match &cli.token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --token-file {}", path.display()))?,
        None => match std::env::var("OUTRIGGER_TOKEN") {
            Ok(t) => t,
            Err(_) => bail!(
                "no admin token: give --token-file FILE or set OUTRIGGER_TOKEN (changes must need a token)"
            ),
        },
    };
    Token::new(&text).context("the admin token")
}

fn reader_token(cli: &Cli, admin: &Token) -> anyhow::Result<Option<Token>> {
    let text = match &cli.reader_token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --reader-token-file {}", path.display()))?,
        None => match std::env::var("OUTRIGGER_READER_TOKEN") {
            Ok(t) => t,
            Err(_) => return Ok(None),
        },
    };
    let reader = Token::new(&text).context("the reader token")?;
    if reader.same_as(admin) {
        bail!("the reader token must differ from the admin token");
    }
    Ok(Some(reader))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    outrigger_config::lifeline::die_with_parent()?;
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).context("--log")?)
        .with_current_span(false)
        .init();
    let admin = token(&cli)?;
    let reader = reader_token(&cli, &admin)?;
    let mut options = Options::new(cli.listen, cli.data_dir.clone(), admin);
    options.reader_token = reader;
    if !cli.server_names.is_empty() {
        options.server_names = cli.server_names.clone();
    }
    options.bundle_file = cli.trust_bundle_out.clone();
    options.insecure_plaintext = cli.insecure_dev_plaintext;
    options.keepalive = cli.keepalive;
    options.trust_domain = cli.trust_domain.clone();
    options.cert_lifetime = cli.cert_lifetime;
    options.mtls = cli.mtls;
    options.ca_root = cli.ca_cert.clone().zip(cli.ca_key.clone());
    options.max_connections = cli.max_connections.max(1);
    options.header_read_timeout = cli.header_read_timeout;
    options.max_body_bytes = cli.max_body_bytes;
    server::run(options, signal()).await?;
    Ok(())
}

fn trust_domain(s: &str) -> Result<String, String> {
    check_trust_domain(s).map(|()| s.to_string())
}

/// At least a second: leaf validity is counted in whole seconds.
fn lifetime(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) {
        return Err("at least 1s".into());
    }
    Ok(d)
}

fn mode(s: &str) -> Result<MtlsMode, String> {
    match s {
        "strict" => Ok(MtlsMode::Strict),
        "permissive" => Ok(MtlsMode::Permissive),
        "off" => Ok(MtlsMode::Off),
        _ => Err("strict, permissive or off".into()),
    }
}

/// SIGTERM or SIGINT.
async fn signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => {}
        r = tokio::signal::ctrl_c() => if let Err(e) = r {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        },
    }
}
