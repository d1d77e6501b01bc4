//! `outrigger delete service|route|policy NAME`.

use super::client::Client;
use http::Method;
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Kind {
    #[value(alias = "services")]
    Service,
    #[value(alias = "routes")]
    Route,
    #[value(alias = "policies")]
    Policy,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    kind: Kind,
    name: String,
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let (collection, kind) = match args.kind {
        Kind::Service => ("services", "Service"),
        Kind::Route => ("routes", "Route"),
        Kind::Policy => ("policies", "Policy"),
    };
    client
        .send(
            Method::DELETE,
            &format!("/v1/{collection}/{}", args.name),
            None,
        )
        .await?
        .ok()?;
    println!("{kind}/{} deleted", args.name);
    Ok(ExitCode::SUCCESS)
}
