//! Bootstrap tokens, the one-time proof a new sidecar shows the mesh CA for its first
//! certificate (later ones it gets with that certificate).
//!
//! - `outrigger token SERVICE [--ttl 10m] [--uses N]`: mint one. The token alone goes to stdout
//!   (so it can be written straight to a file); its id, expiry and uses go to stderr.
//! - `outrigger token list`: id, service, expiry and uses left of every live token (never a
//!   secret: the control plane keeps only hashes).
//! - `outrigger token revoke ID`.

use super::client::Client;
use super::table;
use anyhow::bail;
use http::Method;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    mint: MintArgs,
}

#[derive(Debug, clap::Args)]
struct MintArgs {
    /// The service whose sidecars the token admits.
    #[arg(required = true)]
    service: Option<String>,
    /// How long the token can be used for a first certificate.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// How many first certificates it may get (one per sidecar); without it, any number until
    /// it expires.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    uses: Option<u32>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// The live tokens: id, service, expiry, uses left (never the token itself).
    List {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Revoke a token by id (from `token list` or what minting printed on stderr).
    Revoke { id: String },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

/// A freshly minted token, as `POST /v1/identity/tokens` answers.
#[derive(Deserialize)]
pub struct Minted {
    pub token: String,
    pub id: String,
    pub service: String,
    pub expires_at: String,
    #[serde(default)]
    pub uses: Option<u64>,
}

/// One token as `GET /v1/identity/tokens` lists it.
#[derive(Deserialize, Serialize)]
struct Listed {
    id: String,
    service: String,
    expires_at: String,
    #[serde(default)]
    uses_left: Option<u64>,
}

/// Mints a bootstrap token for `service`: valid for `ttl`, for `uses` certificates (any number
/// until it expires when `None`). The one place the CLI (and `up`) mints tokens.
pub async fn mint(
    client: &Client,
    service: &str,
    ttl: Duration,
    uses: Option<u32>,
) -> anyhow::Result<Minted> {
    let ttl_secs = ttl.as_secs();
    if ttl_secs == 0 {
        bail!("a bootstrap token's TTL must be at least 1s");
    }
    let mut body = json!({"service": service, "ttl_secs": ttl_secs});
    if let Some(n) = uses {
        body["uses"] = json!(n);
    }
    client
        .send_json(Method::POST, "/v1/identity/tokens", &body)
        .await?
        .ok()?
        .json()
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(Command::List { output }) => list(client, output).await,
        Some(Command::Revoke { id }) => revoke(client, &id).await,
        None => {
            let Some(service) = args.mint.service else {
                bail!("name the service: outrigger token SERVICE");
            };
            let minted = mint(client, &service, args.mint.ttl, args.mint.uses).await?;
            println!("{}", minted.token);
            let uses = match minted.uses {
                Some(1) => "single use".to_string(),
                Some(n) => format!("{n} uses"),
                None => "any number of uses".to_string(),
            };
            eprintln!(
                "bootstrap token {} for {}: expires {}, {uses}",
                minted.id, minted.service, minted.expires_at
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn list(client: &Client, output: Output) -> anyhow::Result<ExitCode> {
    let tokens: Vec<Listed> = client.get("/v1/identity/tokens").await?;
    if let Output::Json = output {
        println!("{}", serde_json::to_string_pretty(&tokens)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.service.clone(),
                t.expires_at.clone(),
                t.uses_left
                    .map_or_else(|| "unlimited".to_string(), |n| n.to_string()),
            ]
        })
        .collect();
    table::print(&["ID", "SERVICE", "EXPIRES", "USES LEFT"], &rows);
    Ok(ExitCode::SUCCESS)
}

async fn revoke(client: &Client, id: &str) -> anyhow::Result<ExitCode> {
    client
        .send(Method::DELETE, &format!("/v1/identity/tokens/{id}"), None)
        .await?
        .ok()?;
    println!("bootstrap token {id} revoked");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        token: Args,
    }

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("token").chain(args.iter().copied())).map(|c| c.token)
    }

    #[test]
    fn a_service_mints_and_list_and_revoke_are_subcommands() {
        let a = parse(&["payment", "--ttl", "5m", "--uses", "1"]).expect("mint");
        assert!(a.command.is_none());
        assert_eq!(a.mint.service.as_deref(), Some("payment"));
        assert_eq!(a.mint.ttl, Duration::from_secs(300));
        assert_eq!(a.mint.uses, Some(1));
        let a = parse(&["payment"]).expect("defaults");
        assert_eq!(a.mint.ttl, Duration::from_secs(600));
        assert_eq!(a.mint.uses, None);
        assert!(matches!(
            parse(&["list"]).expect("list").command,
            Some(Command::List { .. })
        ));
        assert!(matches!(
            parse(&["revoke", "tok-1"]).expect("revoke").command,
            Some(Command::Revoke { id }) if id == "tok-1"
        ));
        assert!(parse(&[]).is_err(), "a service or a subcommand is required");
        assert!(parse(&["payment", "--uses", "0"]).is_err());
        assert!(parse(&["list", "--uses", "2"]).is_err());
    }
}
