//! `outrigger ca drop ID [--force]`: remove a root from the trust bundle.

use super::super::client::Client;
use http::Method;
use serde_json::Value;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    id: String,
    /// Drop it even though leaves it signed have not expired (their sidecars fail mTLS until
    /// they renew).
    #[arg(long)]
    force: bool,
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let query = if args.force { "?force=true" } else { "" };
    let outcome: Value = client
        .send(
            Method::DELETE,
            &format!("/v1/ca/roots/{}{query}", args.id),
            None,
        )
        .await?
        .ok()?
        .json()?;
    let forced = outcome["forced_over_leaves"].as_u64().unwrap_or(0);
    if forced > 0 {
        println!(
            "root {} dropped over {forced} unexpired leaf certificate(s)",
            args.id
        );
    } else {
        println!("root {} dropped", args.id);
    }
    Ok(ExitCode::SUCCESS)
}
