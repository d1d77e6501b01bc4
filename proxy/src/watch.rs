//! The static config file: loaded at start, then polled. Polling (not inotify) also sees
//! atomic renames and edits through symlinks, as Kubernetes ConfigMap mounts do. A valid change
//! is applied at once; an invalid one is logged with its reason, counted, and ignored, so the
//! last good snapshot keeps serving.

use crate::sidecar::Sidecar;
use outrigger_config::{from_yaml_validated, ConfigError, SidecarFile};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const SOURCE: &str = "file";
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config in {path}: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: ConfigError,
    },
}

pub fn parse(path: &Path, text: &str) -> Result<SidecarFile, LoadError> {
    from_yaml_validated(text).map_err(|source| LoadError::Invalid {
        path: path.to_path_buf(),
        source,
    })
}

pub fn load(path: &Path) -> Result<(SidecarFile, String), LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((parse(path, &text)?, text))
}

/// Watches `path` for changes to the text last applied (`applied`).
pub fn spawn(path: PathBuf, mut applied: String, sidecar: Arc<Sidecar>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rejected: Option<String> = None;
        loop {
            tick.tick().await;
            let text = match tokio::fs::read_to_string(&path).await {
                Ok(t) => t,
                Err(e) => {
                    if rejected.as_deref() != Some("") {
                        tracing::warn!(path = %path.display(), error = %e, "config file unreadable; keeping the current snapshot");
                        sidecar.snapshot.reject(SOURCE, &sidecar.telemetry);
                        rejected = Some(String::new());
                    }
                    continue;
                }
            };
            if text == applied || rejected.as_ref() == Some(&text) {
                continue;
            }
            match parse(&path, &text) {
                Ok(file) => {
                    if file.proxy != sidecar.settings {
                        tracing::warn!(
                            "the `proxy` section changed; it takes effect only after a restart"
                        );
                    }
                    let version = sidecar
                        .snapshot
                        .apply(file.snapshot, SOURCE, &sidecar.telemetry);
                    tracing::info!(version, path = %path.display(), "applied new config");
                    applied = text;
                    rejected = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rejected config change; the previous snapshot keeps serving");
                    sidecar.snapshot.reject(SOURCE, &sidecar.telemetry);
                    rejected = Some(text);
                }
            }
        }
    });
}
