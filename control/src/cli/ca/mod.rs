//! `outrigger ca status|roots|rotate|drop`: the mesh CA's roots. One module per subcommand.

mod drop;
mod roots;
mod rotate;
mod status;

use super::client::Client;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The active root, a pending one, and which sidecars do not trust the pending one yet.
    Status(status::Args),
    /// List the roots: id, expiry, which one signs, unexpired leaves.
    Roots(roots::Args),
    /// Add a new root: it signs once every connected sidecar trusts it (`--force`: at once).
    Rotate(rotate::Args),
    /// Drop a root from the trust bundle (refused while unexpired leaves chain to it).
    Drop(drop::Args),
}

pub async fn run(client: &Client, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Status(a) => status::run(client, a).await,
        Command::Roots(a) => roots::run(client, a).await,
        Command::Rotate(a) => rotate::run(client, a).await,
        Command::Drop(a) => drop::run(client, a).await,
    }
}
