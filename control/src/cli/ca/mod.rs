//! `outrigger ca roots|rotate|drop`: the mesh CA's roots. One module per subcommand.

mod drop;
mod roots;
mod rotate;

use super::client::Client;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the roots: id, expiry, which one signs, unexpired leaves.
    Roots(roots::Args),
    /// Make a new root the signer; sidecars trust old and new until the old one is dropped.
    Rotate,
    /// Drop a root from the trust bundle (refused while unexpired leaves chain to it).
    Drop(drop::Args),
}

pub async fn run(client: &Client, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Roots(a) => roots::run(client, a).await,
        Command::Rotate => rotate::run(client).await,
        Command::Drop(a) => drop::run(client, a).await,
    }
}
