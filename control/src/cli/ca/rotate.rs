//! `outrigger ca rotate`: a new root signs from now on.

use super::super::client::Client;
use http::Method;
use serde_json::Value;
use std::process::ExitCode;

pub async fn run(client: &Client) -> anyhow::Result<ExitCode> {
    let outcome: Value = client
        .send(Method::POST, "/v1/ca/roots", None)
        .await?
        .ok()?
        .json()?;
    let id = outcome["root"]["id"].as_str().unwrap_or("?");
    println!(
        "root {id} is now the signer (revision {})",
        outcome["revision"]
    );
    println!("drop the old root once its leaves have expired: outrigger ca drop OLD-ID");
    Ok(ExitCode::SUCCESS)
}
