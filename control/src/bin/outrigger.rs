//! `outrigger`: the operator CLI (subcommands in `src/cli/`).
#![forbid(unsafe_code)]

#[path = "../cli/mod.rs"]
mod cli;

use clap::{CommandFactory, FromArgMatches};
use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let matches = cli::Cli::command().get_matches();
    let cli = match cli::Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    // `up` runs a control plane of its own: a --control-plane given to it would be ignored,
    // so it is refused. The environment variable, meant for the other commands, is not.
    if matches.subcommand_name() == Some("up")
        && matches.value_source("control_plane") == Some(clap::parser::ValueSource::CommandLine)
    {
        eprintln!(
            "error: up starts and uses a control plane of its own; --control-plane is for the \
             commands that talk to a running one (apply, get, top, ...). Drop it, or use \
             `outrigger top --control-plane URL` to watch an existing mesh"
        );
        return ExitCode::from(2);
    }
    match cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
