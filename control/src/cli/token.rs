//! `outrigger token SERVICE [--ttl 1h]`: mint a bootstrap token for a service's sidecars. The
//! token alone goes to stdout (so it can be written straight to a file); when it expires goes
//! to stderr.

use super::client::Client;
use anyhow::bail;
use http::Method;
use serde::Deserialize;
use serde_json::json;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    service: String,
    /// How long the token can be used to get (and renew) certificates.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

#[derive(Deserialize)]
struct Minted {
    token: String,
    service: String,
    expires_at: String,
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let ttl_secs = args.ttl.as_secs();
    if ttl_secs == 0 {
        bail!("--ttl must be at least 1s");
    }
    let minted: Minted = client
        .send_json(
            Method::POST,
            "/v1/identity/tokens",
            &json!({"service": args.service, "ttl_secs": ttl_secs}),
        )
        .await?
        .ok()?
        .json()?;
    println!("{}", minted.token);
    eprintln!(
        "bootstrap token for {} (expires {})",
        minted.service, minted.expires_at
    );
    Ok(ExitCode::SUCCESS)
}
