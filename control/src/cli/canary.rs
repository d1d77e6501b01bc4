//! `outrigger canary SERVICE VERSION=WEIGHT...`: set versions' weights (percent); the rest of
//! the split follows in proportion.

use super::client::Client;
use anyhow::{bail, Context};
use http::Method;
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    service: String,
    /// e.g. v2=25
    #[arg(value_name = "VERSION=WEIGHT", required = true)]
    weights: Vec<String>,
    /// Accept a version that has no registered instance yet (refused otherwise: its share
    /// would go to the other versions while the split says it is served).
    #[arg(long)]
    force: bool,
}

#[derive(Deserialize)]
struct Outcome {
    service: String,
    split: Vec<Weighted>,
    #[serde(default)]
    warnings: Vec<String>,
}

#[derive(Deserialize)]
struct Weighted {
    version: String,
    weight: u32,
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let mut weights = BTreeMap::new();
    for w in &args.weights {
        let Some((version, weight)) = w.split_once('=') else {
            bail!("{w:?}: expected VERSION=WEIGHT, e.g. v2=25");
        };
        let weight: u32 = weight
            .trim_end_matches('%')
            .parse()
            .with_context(|| format!("{w:?}: the weight is a whole percentage"))?;
        weights.insert(version.to_string(), weight);
    }
    let outcome: Outcome = client
        .send_json(
            Method::PATCH,
            &format!(
                "/v1/services/{}/split{}",
                args.service,
                if args.force { "?force=true" } else { "" }
            ),
            &json!({ "weights": weights }),
        )
        .await?
        .ok()?
        .json()?;
    let split: Vec<String> = outcome
        .split
        .iter()
        .map(|w| format!("{}={}", w.version, w.weight))
        .collect();
    println!("{}: {}", outcome.service, split.join(" "));
    for w in &outcome.warnings {
        eprintln!("warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}
