//! The processes a running `outrigger up` started, found from /proc, for tests that stop,
//! replace or restart one of them while the mesh runs.

use crate::up::Up;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A process `outrigger up` started, as its command line says.
#[derive(Debug, Clone)]
pub struct Started {
    pub pid: u32,
    /// The command line, the program first.
    pub args: Vec<String>,
}

impl Started {
    pub fn program(&self) -> &str {
        self.args
            .first()
            .and_then(|p| p.rsplit('/').next())
            .unwrap_or_default()
    }

    pub fn flag(&self, name: &str) -> Option<&str> {
        let at = self.args.iter().position(|a| a == name)?;
        self.args.get(at + 1).map(String::as_str)
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        self.flag(name)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {name} address in {:?}", self.args))
    }

    /// The same arguments (without the program) with these flags' values replaced.
    pub fn args_with(&self, changes: &[(&str, String)]) -> Vec<String> {
        let mut out: Vec<String> = self.args.iter().skip(1).cloned().collect();
        for (name, value) in changes {
            let at = out
                .iter()
                .position(|a| a == name)
                .unwrap_or_else(|| panic!("no {name} in {out:?}"));
            out[at + 1] = value.clone();
        }
        out
    }
}

/// (state, parent pid, start time in clock ticks) of a process, from /proc.
pub fn stat(pid: u32) -> Option<(String, u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's closing parenthesis: state, ppid, ... starttime (field 22).
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((
        f.first()?.to_string(),
        f.get(1)?.parse().ok()?,
        f.get(19)?.parse().ok()?,
    ))
}

/// Running: neither gone nor a zombie (`up` reaps its children only when it stops, so a child
/// that exited stays a zombie and its pid is not reused meanwhile).
pub fn running(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _, _)| state != "Z")
}

/// The running children of `parent`, in the order they started.
pub fn children_of(parent: u32) -> Vec<Started> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Some((state, ppid, start)) = stat(pid) else {
            continue;
        };
        if ppid != parent || state == "Z" {
            continue;
        }
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        found.push((start, Started { pid, args }));
    }
    found.sort_by_key(|(start, s)| (*start, s.pid));
    found.into_iter().map(|(_, s)| s).collect()
}

pub fn kill(pid: u32, signal: &str) {
    let sent = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -{signal} {pid}");
}

/// One shop instance `up` started: the app and the sidecar in front of it.
pub struct Instance {
    pub service: String,
    /// The sidecar's id, which also names its log (`<id>-sidecar.log`).
    pub id: String,
    pub app: Started,
    pub sidecar: Started,
}

/// The shop instances of a running `up` in the order it started them, and the edge sidecar's
/// admin address (the shoppers' sidecar, which has no app).
pub fn shop_of(up: &Up) -> (Vec<Instance>, SocketAddr) {
    let children = children_of(up.pid());
    let apps: Vec<&Started> = children.iter().filter(|c| c.program() == "shop").collect();
    let mut instances = Vec::new();
    let mut edge = None;
    for sidecar in children.iter().filter(|c| c.program() == "outrigger-proxy") {
        let Some(app) = sidecar.flag("--app") else {
            edge = Some(sidecar.addr("--admin"));
            continue;
        };
        let app = apps
            .iter()
            .find(|a| a.flag("--listen") == Some(app))
            .unwrap_or_else(|| panic!("no shop process listens on {app}: {children:?}"));
        instances.push(Instance {
            service: sidecar.flag("--service").unwrap_or_default().to_string(),
            id: sidecar.flag("--sidecar-id").unwrap_or_default().to_string(),
            app: (*app).clone(),
            sidecar: sidecar.clone(),
        });
    }
    let edge = edge.unwrap_or_else(|| panic!("no edge sidecar among {children:?}"));
    (instances, edge)
}

/// A process of the test's own, killed when dropped (a failed assertion included).
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn_logged(program: &Path, args: &[String], log: &Path) -> Killed {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    let child = Command::new(program)
        .args(args)
        // `up`'s children die with `up` (outrigger_config::lifeline); these belong to the test.
        .env_remove("OUTRIGGER_PARENT_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
    Killed(child)
}
