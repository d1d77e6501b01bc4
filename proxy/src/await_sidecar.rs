//! `outrigger-proxy await` (Linkerd's `linkerd-await`, Istio's `pilot-agent wait`): waits until
//! the sidecar beside it is ready; then, given a command, runs it and, with `--shutdown`, ends
//! the sidecar once the command is done. A Job on a cluster without native sidecars needs this:
//! its sidecar would otherwise run forever and the Job never complete. As a `postStart` hook
//! without a command it holds the app back until the sidecar is ready.
//!
//! `copy-self` puts this binary where an app container can run it (a shared `emptyDir`), for
//! images that have no `cp`.

use crate::health::http_get::request;
use http::{HeaderMap, Method, StatusCode};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, clap::Args)]
pub struct AwaitArgs {
    /// The sidecar's admin listener.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Give up (exit 1) if the sidecar is not ready by then.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// After the command ends, tell the sidecar to shut down (POST /shutdown).
    #[arg(long)]
    pub shutdown: bool,
    /// The command to run once the sidecar is ready, and its arguments.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

#[derive(Debug, thiserror::Error)]
pub enum AwaitError {
    #[error("the sidecar at {admin} was not ready within {after:?}; last: {last}")]
    NotReady {
        admin: SocketAddr,
        after: Duration,
        last: String,
    },
    #[error("cannot run {command:?}: {source}")]
    Spawn {
        command: OsString,
        source: std::io::Error,
    },
    #[error("copying {from} to {to}: {source}")]
    Copy {
        from: String,
        to: String,
        source: std::io::Error,
    },
}

/// Runs `await`; the exit code is the command's (0 with no command).
pub async fn run(args: AwaitArgs) -> Result<i32, AwaitError> {
    wait_ready(args.admin, args.timeout).await?;
    let Some((program, rest)) = args.command.split_first() else {
        return Ok(0);
    };
    let mut child = tokio::process::Command::new(program)
        .args(rest)
        .spawn()
        .map_err(|source| AwaitError::Spawn {
            command: program.clone(),
            source,
        })?;
    // As PID 1 of its container, this process gets the kubelet's SIGTERM: pass it on.
    let status = {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        loop {
            tokio::select! {
                s = child.wait() => break s,
                Some(()) = async { match term.as_mut() { Some(t) => t.recv().await, None => None } } => {
                    if let Some(pid) = child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                    }
                }
            }
        }
    };
    let code = match status {
        Ok(s) => s.code().unwrap_or(128 + 15),
        Err(_) => 1,
    };
    if args.shutdown {
        match request(
            Method::POST,
            args.admin,
            "/shutdown",
            &HeaderMap::new(),
            Duration::from_secs(5),
        )
        .await
        {
            Ok((s, _)) if s.is_success() => {}
            Ok((s, body)) => eprintln!(
                "outrigger-proxy await: the sidecar refused /shutdown ({s}): {}",
                String::from_utf8_lossy(&body).trim()
            ),
            Err(e) => eprintln!("outrigger-proxy await: /shutdown: {e}"),
        }
    }
    Ok(code)
}

/// Polls `/ready` until it answers 200.
pub async fn wait_ready(admin: SocketAddr, within: Duration) -> Result<(), AwaitError> {
    let deadline = Instant::now() + within;
    loop {
        let last = match request(
            Method::GET,
            admin,
            "/ready",
            &HeaderMap::new(),
            Duration::from_secs(2),
        )
        .await
        {
            Ok((StatusCode::OK, _)) => return Ok(()),
            Ok((s, body)) => format!("{s}: {}", String::from_utf8_lossy(&body).trim()),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(AwaitError::NotReady {
                admin,
                after: within,
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `copy-self DEST`: this executable to `dest`, mode 0755.
pub fn copy_self(dest: &Path) -> Result<(), AwaitError> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |from: &Path, source| AwaitError::Copy {
        from: from.display().to_string(),
        to: dest.display().to_string(),
        source,
    };
    let me = std::env::current_exe().map_err(|e| fail(Path::new("this binary"), e))?;
    std::fs::copy(&me, dest).map_err(|e| fail(&me, e))?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| fail(&me, e))?;
    Ok(())
}
