//! `outrigger completions bash|zsh|fish`: the shell's completion script on stdout, generated
//! from the same definitions as `--help`.

use clap::CommandFactory;
use clap_complete::Shell;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell: bash, zsh, fish (also elvish, powershell).
    #[arg(value_enum)]
    shell: Shell,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut cmd = super::Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "outrigger", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}
