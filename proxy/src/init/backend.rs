//! Which iptables binary (nft or legacy), and running it: `iptables-restore --noflush` with our
//! chains (atomic per table), `-C` to see which jumps exist, `-D`/`-F`/`-X` to uninstall.

use super::rules::{self, Jump, Rules};
use std::io::Write;
use std::process::{Command, Stdio};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Auto,
    Nft,
    Legacy,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("neither iptables-nft nor iptables-legacy works here ({0}); install iptables")]
    NoIptables(String),
    #[error("{command}: {reason}")]
    Failed { command: String, reason: String },
}

pub struct Backend {
    /// `iptables-nft` or `iptables-legacy`.
    bin: &'static str,
}

fn works(bin: &str) -> Result<String, String> {
    let out = Command::new(bin)
        .args(["-t", "nat", "-S"])
        .output()
        .map_err(|e| format!("{bin}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{bin}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Backend {
    pub fn choose(mode: Mode) -> Result<Self, BackendError> {
        let pick = |bin: &'static str| {
            works(bin)
                .map(|_| Self { bin })
                .map_err(BackendError::NoIptables)
        };
        match mode {
            Mode::Nft => pick("iptables-nft"),
            Mode::Legacy => pick("iptables-legacy"),
            Mode::Auto => {
                // The one already holding rules wins: mixing backends splits the rules.
                let legacy = works("iptables-legacy");
                if legacy
                    .as_deref()
                    .is_ok_and(|t| t.lines().any(|l| l.starts_with("-A ")))
                {
                    return Ok(Self {
                        bin: "iptables-legacy",
                    });
                }
                match works("iptables-nft") {
                    Ok(_) => Ok(Self {
                        bin: "iptables-nft",
                    }),
                    Err(nft) => legacy
                        .map(|_| Self {
                            bin: "iptables-legacy",
                        })
                        .map_err(|l| BackendError::NoIptables(format!("{nft}; {l}"))),
                }
            }
        }
    }

    pub fn iptables(&self) -> &'static str {
        self.bin
    }

    fn restore_bin(&self) -> String {
        format!("{}-restore", self.bin)
    }

    fn has(&self, jump: Jump) -> bool {
        let mut args = vec!["-t", "nat", "-C"];
        args.extend(jump.rule());
        Command::new(self.bin)
            .args(&args)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Our chains replaced whole, and the jumps into them added once.
    pub fn apply(&self, rules: &Rules) -> Result<(), BackendError> {
        let missing: Vec<Jump> = [Jump::Prerouting, Jump::Output]
            .into_iter()
            .filter(|j| !self.has(*j))
            .collect();
        let input = rules.restore_input(&missing);
        let command = format!("{} --noflush", self.restore_bin());
        let failed = |reason: String| BackendError::Failed {
            command: command.clone(),
            reason,
        };
        let mut child = Command::new(self.restore_bin())
            .arg("--noflush")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| failed(e.to_string()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .map_err(|e| failed(e.to_string()))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| failed(e.to_string()))?;
        if !out.status.success() {
            return Err(failed(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        Ok(())
    }

    /// Removes the jumps (every copy) and our chains; what is already gone is fine.
    pub fn uninstall(&self) -> Result<(), BackendError> {
        for cmd in rules::uninstall_commands() {
            let is_delete = cmd.get(2).is_some_and(|f| f == "-D");
            loop {
                let out = Command::new(self.bin).args(&cmd).output().map_err(|e| {
                    BackendError::Failed {
                        command: format!("{} {}", self.bin, cmd.join(" ")),
                        reason: e.to_string(),
                    }
                })?;
                // A jump may have been added twice by hand: delete until none is left.
                if !(is_delete && out.status.success()) {
                    break;
                }
            }
        }
        Ok(())
    }
}
