//! `outrigger`: the operator CLI (subcommands in `src/cli/`).
#![forbid(unsafe_code)]

#[path = "../cli/mod.rs"]
mod cli;

use clap::Parser;
use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
