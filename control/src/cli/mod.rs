//! The `outrigger` operator CLI. Each subcommand is one variant of [`Command`] and one module
//! with its `Args` and `run`; adding one is those two things.

mod apply;
mod ca;
mod canary;
mod check;
mod client;
mod completions;
mod delete;
mod explain;
mod get;
mod inject;
mod input;
mod table;
mod token;
mod top;
mod up;
mod validate;

use clap::{Parser, Subcommand};
use client::Client;
use std::path::PathBuf;
use std::process::ExitCode;

/// Operate an Outrigger mesh through its control plane.
#[derive(Debug, Parser)]
#[command(
    name = "outrigger",
    version,
    about = "The Outrigger operator CLI: apply and inspect mesh resources, shift canaries, mint bootstrap tokens, run the CA, watch the mesh (top) and run the shop mesh locally (up)",
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP
)]
pub struct Cli {
    /// The control plane's URL: https:// (http:// only with --insecure-dev-plaintext).
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "OUTRIGGER_CONTROL_PLANE",
        default_value = "https://127.0.0.1:15010"
    )]
    pub control_plane: String,

    /// The control plane's trust bundle (`<data-dir>/trust-bundle.pem`), as a PEM file or (in
    /// OUTRIGGER_TRUST_ANCHORS) PEM text: its certificate must chain to one of these roots and
    /// name the URL's host. Required for https.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "OUTRIGGER_TRUST_ANCHORS",
        hide_env_values = true
    )]
    pub trust_anchors: Option<String>,

    /// File holding an operator token, admin (writes) or reader (reads); else OUTRIGGER_TOKEN.
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Allow a plain http:// control plane (development only: the token crosses the network
    /// in the clear and nothing proves who answers).
    #[arg(long, global = true)]
    pub insecure_dev_plaintext: bool,

    #[command(subcommand)]
    pub command: Command,
}

const LONG_ABOUT: &str = "\
The Outrigger operator CLI.

It talks to the control plane's REST API over HTTPS, checking the control plane's certificate \
against its trust bundle (--trust-anchors), and authenticates with an operator token: an admin \
token may change the mesh, a reader token only read it. `validate`, `inject`, `completions` and \
`up` need no control plane.";

const AFTER_LONG_HELP: &str = "\
ENVIRONMENT:
  OUTRIGGER_CONTROL_PLANE   the control plane's URL (default https://127.0.0.1:15010)
  OUTRIGGER_TRUST_ANCHORS   its trust bundle: a PEM file's path, or the PEM text
  OUTRIGGER_TOKEN           an operator token (admin or reader), when --token-file is not given

EXAMPLES:
  outrigger validate -f mesh.yaml                  check resources offline
  outrigger apply -f mesh.yaml                     store them (all or nothing)
  outrigger get services                           what the mesh holds
  outrigger canary payment v2=25                   shift a quarter of payment to v2
  outrigger token payment --ttl 720h               a bootstrap token for payment's pods
  outrigger top                                    the live view
  outrigger up --duration 30s                      the shop mesh on this machine
  outrigger inject -f app.yaml                     the app's manifests with the sidecar added
  outrigger completions bash > /etc/bash_completion.d/outrigger

EXIT STATUS:
  0 success; 1 the request failed or was refused (the reason is on stderr); 2 bad usage.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate and store resources from a YAML file (`-` reads stdin).
    Apply(apply::Args),
    /// List or show services, routes, policies, sidecars or registry instances.
    Get(get::Args),
    /// Delete a service, route or policy.
    Delete(delete::Args),
    /// Shift traffic between a service's versions, e.g. `outrigger canary payment v2=25`.
    Canary(canary::Args),
    /// The mesh CA: `status` (roots, and which sidecars lag behind a pending root), `roots`,
    /// `rotate [--force]`, `drop ID [--force]`.
    #[command(subcommand)]
    Ca(ca::Command),
    /// Bootstrap tokens: `token SERVICE [--ttl 10m] [--uses N]` mints one for a service's
    /// sidecars (the token alone on stdout), `token list`, `token revoke ID`.
    Token(token::Args),
    /// Run the whole shop mesh on this machine: control plane, every service with its sidecar,
    /// storefront load and a live table. `--duration 30s` runs unattended and prints a summary.
    Up(Box<up::UpArgs>),
    /// A live view of a running mesh: per service what its callers' sidecars see (the columns
    /// of `up`), and each sidecar's sync state. Keys only (`q` quits, `s` sorts); plain text
    /// when stdout is not a terminal, or with `--plain`; `--once` prints one snapshot.
    Top(top::Args),
    /// Check mesh resources and sidecar files offline, with apply's errors (document, field,
    /// line, column) and no control plane: `outrigger validate -f mesh.yaml -f sidecar.yaml`.
    /// Exits 1 on any error.
    Validate(validate::Args),
    /// Is the mesh healthy? Checks the control plane (reachable, certificate trusted), the
    /// CA's time left, every sidecar (in sync, ready, its app answering), that called services
    /// have endpoints, that no split names a version without instances, and the clocks. One
    /// line per check, a hint for each failure; exit 1 when any fails.
    Check(check::Args),
    /// What a call from SERVICE-A to SERVICE-B goes through, from the live control plane:
    /// calls, mTLS and authorisation, the routes in match order with their timeouts and
    /// retries, the policy, the split and the endpoints with their ejection; and whether it can
    /// succeed, or why not (exit 1).
    Explain(explain::Args),
    /// Add the Outrigger sidecar to Kubernetes workloads: reads manifests (`-f FILE`, default
    /// stdin), writes them to stdout with every Deployment, StatefulSet, DaemonSet, Job and Pod
    /// given the init container (interception rules), the sidecar (a native sidecar; or
    /// `--native-sidecar=false` before Kubernetes 1.29), its volumes and the app's HTTP probes
    /// pointed at the sidecar's health port. Everything else, workloads annotated
    /// `outrigger.io/inject: disabled` and those already injected are kept byte for byte, so
    /// injecting twice changes nothing. Needs no control plane: `--mesh-control-plane` is the
    /// URL the sidecars will use.
    Inject(inject::Args),
    /// Print the shell completion script: `outrigger completions bash|zsh|fish`.
    Completions(completions::Args),
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Up(a) = cli.command {
        up::run(*a).await?;
        return Ok(ExitCode::SUCCESS);
    }
    match cli.command {
        Command::Validate(a) => return validate::run(a),
        Command::Completions(a) => return completions::run(a),
        Command::Inject(a) => return inject::run(a),
        _ => {}
    }
    let client = Client::new(&client::Target {
        url: &cli.control_plane,
        trust_anchors: cli.trust_anchors.as_deref(),
        token_file: cli.token_file.as_deref(),
        insecure_dev_plaintext: cli.insecure_dev_plaintext,
    })?;
    match cli.command {
        Command::Apply(a) => apply::run(&client, a).await,
        Command::Get(a) => get::run(&client, a).await,
        Command::Delete(a) => delete::run(&client, a).await,
        Command::Canary(a) => canary::run(&client, a).await,
        Command::Ca(c) => ca::run(&client, c).await,
        Command::Token(a) => token::run(&client, a).await,
        Command::Top(a) => top::run(&client, a).await,
        Command::Check(a) => check::run(&client, a).await,
        Command::Explain(a) => explain::run(&client, a).await,
        Command::Up(_) | Command::Validate(_) | Command::Completions(_) | Command::Inject(_) => {
            Ok(ExitCode::SUCCESS)
        }
    }
}
