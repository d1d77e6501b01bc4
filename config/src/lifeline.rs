//! Dying with the parent that started this process. `outrigger up` names itself in
//! [`PARENT_PID_ENV`] when it starts a child; the child asks the kernel for SIGTERM when that
//! parent dies — however it dies, SIGKILL included, when nothing of it runs to stop its
//! children — and so stops as it would on any SIGTERM. Without the variable (a sidecar started
//! by a shell, systemd or Kubernetes) nothing changes.

/// The variable holding the pid of the parent whose death ends this process.
pub const PARENT_PID_ENV: &str = "OUTRIGGER_PARENT_PID";

#[derive(Debug, thiserror::Error)]
pub enum LifelineError {
    #[error("{PARENT_PID_ENV}={0:?} is not a process id")]
    BadPid(String),
    #[error("cannot ask for the parent-death signal: {0}")]
    Prctl(#[from] std::io::Error),
    #[error("the parent that started this process ({PARENT_PID_ENV}={0}) is already gone")]
    ParentGone(i32),
}

/// Call first thing in `main`. The kernel sends the signal when the parent *thread* that
/// forked us ends: `up` starts its children from its one runtime thread, which lives as long
/// as `up` does.
pub fn die_with_parent() -> Result<(), LifelineError> {
    let Ok(raw) = std::env::var(PARENT_PID_ENV) else {
        return Ok(());
    };
    let want: i32 = raw
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| LifelineError::BadPid(raw.clone()))?;
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
        .map_err(std::io::Error::from)?;
    // The parent may have died between our fork and the request above: then no signal comes,
    // and we have been handed to another parent already.
    let now = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
    if now != want {
        return Err(LifelineError::ParentGone(want));
    }
    Ok(())
}
