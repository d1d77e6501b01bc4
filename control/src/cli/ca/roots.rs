//! `outrigger ca roots [-o json]`: the CA's roots as a table.

use super::super::client::Client;
use super::super::table;
use serde_json::Value;
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let roots: Vec<Value> = client.get("/v1/ca/roots").await?;
    if let Output::Json = args.output {
        println!("{}", serde_json::to_string_pretty(&roots)?);
        return Ok(ExitCode::SUCCESS);
    }
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let rows: Vec<Vec<String>> = roots
        .iter()
        .map(|r| {
            vec![
                text(&r["id"]),
                if r["active"] == true { "yes" } else { "no" }.to_string(),
                text(&r["not_after"]),
                r["unexpired_leaves"].as_u64().unwrap_or(0).to_string(),
                text(&r["last_leaf_expires_at"]),
            ]
        })
        .collect();
    table::print(
        &[
            "ID",
            "ACTIVE",
            "NOT AFTER",
            "UNEXPIRED LEAVES",
            "LAST LEAF EXPIRES",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}
