//! The child processes of `outrigger up`: started with their output in log files, and always
//! stopped on the way out — SIGTERM first so they drain, SIGKILL for stragglers — so a run
//! never leaves orphans behind, whether it ends by timer, Ctrl-C or error.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot start {name} ({bin}): {source}")]
    Spawn {
        name: String,
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create log file {path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub struct Procs {
    logs: PathBuf,
    children: Vec<(String, Child)>,
}

impl Procs {
    pub fn new(logs: &Path) -> Self {
        Self {
            logs: logs.to_path_buf(),
            children: Vec::new(),
        }
    }

    pub fn spawn(&mut self, name: &str, bin: &Path, args: &[String]) -> Result<(), ProcError> {
        let path = self.logs.join(format!("{name}.log"));
        let out = std::fs::File::create(&path).map_err(|source| ProcError::Log {
            path: path.clone(),
            source,
        })?;
        let err = out.try_clone().map_err(|source| ProcError::Log {
            path: path.clone(),
            source,
        })?;
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            // If this process dies without stopping them (SIGKILL), the kernel sends each
            // child SIGTERM: they ask for it at start (`outrigger_config::lifeline`).
            .env(
                outrigger_config::lifeline::PARENT_PID_ENV,
                std::process::id().to_string(),
            )
            // The safety net: if this process dies without stopping them, they die with it.
            .kill_on_drop(true)
            // Their own process group: Ctrl-C at the terminal reaches `up` alone, which takes
            // the summary from the running mesh first and then stops the children itself.
            .process_group(0)
            .spawn()
            .map_err(|source| ProcError::Spawn {
                name: name.to_string(),
                bin: bin.to_path_buf(),
                source,
            })?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    /// Names of children that have exited on their own.
    pub fn exited(&mut self) -> Vec<String> {
        self.children
            .iter_mut()
            .filter_map(|(n, c)| matches!(c.try_wait(), Ok(Some(_))).then(|| n.clone()))
            .collect()
    }

    /// SIGTERM to all (services first, the control plane last, as they were started in the
    /// opposite order), then SIGKILL whatever is still running after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        for (_, c) in self.children.iter().rev() {
            if let Some(pid) = c.id() {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status()
                    .await;
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        for (name, c) in self.children.iter_mut() {
            if tokio::time::timeout_at(deadline, c.wait()).await.is_err() {
                tracing::warn!(process = %name, "did not stop in time; killing it");
                let _ = c.start_kill();
                let _ = c.wait().await;
            }
        }
        self.children.clear();
    }
}
