//! `outrigger ca rotate [--force]`: a new root joins the trust bundle at once and becomes the
//! signer once every connected sidecar trusts it (`outrigger ca status` shows who lags);
//! `--force` makes it the signer at once.

use super::super::client::Client;
use http::Method;
use serde_json::Value;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Make the new root the signer now, without waiting for every sidecar to trust it (those
    /// that do not yet fail mTLS with peers holding new certificates until they catch up).
    #[arg(long)]
    force: bool,
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let path = if args.force {
        "/v1/ca/roots?force=true"
    } else {
        "/v1/ca/roots"
    };
    let outcome: Value = client.send(Method::POST, path, None).await?.ok()?.json()?;
    println!("{}", text(&outcome));
    Ok(ExitCode::SUCCESS)
}

fn text(outcome: &Value) -> String {
    let active = outcome["active"].as_str().unwrap_or("?");
    match outcome["pending"].as_str() {
        Some(pending) if pending != active => format!(
            "root {pending} is pending: it signs once every connected sidecar trusts it \
             (outrigger ca status shows who lags); {active} signs until then"
        ),
        _ => format!("root {active} is now the signer"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_the_pending_and_the_active_root() {
        let t = text(&json!({"pending": "r2", "active": "r1"}));
        assert!(
            t.starts_with("root r2 is pending") && t.contains("r1 signs until then"),
            "{t}"
        );
        assert_eq!(
            text(&json!({"pending": null, "active": "r2"})),
            "root r2 is now the signer"
        );
    }
}
