//! `outrigger apply -f FILE [--dry-run]`.

use super::client::Client;
use anyhow::Context;
use bytes::Bytes;
use http::{Method, StatusCode};
use outrigger_config::error::FieldError;
use serde::Deserialize;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// YAML (or JSON) file of resources; `-` reads stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    file: PathBuf,
    /// Validate only: report what would change, store nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Deserialize)]
struct Outcome {
    applied: Vec<Applied>,
    revision: u64,
}

#[derive(Deserialize)]
struct Applied {
    kind: String,
    name: String,
    action: String,
}

#[derive(Deserialize)]
struct Rejected {
    #[serde(default)]
    details: Vec<FieldError>,
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let text = super::input::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let path = if args.dry_run {
        "/v1/apply?dry_run=true"
    } else {
        "/v1/apply"
    };
    let reply = client
        .send(
            Method::POST,
            path,
            Some((Bytes::from(text), "application/yaml")),
        )
        .await?;
    if reply.status == StatusCode::BAD_REQUEST {
        if let Ok(rejected) = reply.json::<Rejected>() {
            if !rejected.details.is_empty() {
                for e in &rejected.details {
                    eprintln!("{e}");
                }
                eprintln!(
                    "error: {} rejected; nothing was applied",
                    args.file.display()
                );
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    let outcome: Outcome = reply.ok()?.json()?;
    let suffix = if args.dry_run { " (dry run)" } else { "" };
    for a in &outcome.applied {
        println!("{}/{} {}{suffix}", a.kind, a.name, a.action);
    }
    println!("revision {}", outcome.revision);
    Ok(ExitCode::SUCCESS)
}
