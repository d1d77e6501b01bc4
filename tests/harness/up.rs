//! `outrigger up` in the background, for system tests that look at a running mesh: started
//! with extra flags, ready once it prints its `mesh up:` line (which names the control plane
//! and the edge sidecar) and its `trust anchors:` line (the control plane's trust bundle and
//! the reader token for `top`), stopped with SIGTERM (so it stops its children) however the
//! test ends.

use crate::bin;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Up {
    child: Child,
    /// The control plane, e.g. `https://127.0.0.1:40123`.
    pub control_url: String,
    /// The control plane's trust bundle, as `up` printed it: `--trust-anchors` for the CLI.
    pub trust_anchors: PathBuf,
    /// The reader token `up` gave the control plane, as it printed it: `--token-file` for `top`.
    pub reader_token_file: PathBuf,
    /// The storefront's sidecar: send requests here as a shopper would.
    pub edge: SocketAddr,
    /// Every stdout line so far.
    lines: Arc<Mutex<Vec<String>>>,
    /// Set once stdout is at its end: `up` has exited (its children write to log files).
    eof: Arc<AtomicBool>,
    stderr: PathBuf,
    workdir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Up {
    /// Starts `outrigger up --duration 900s --workdir <tmp> ARGS...` and waits (up to 180 s)
    /// until the mesh is up.
    pub async fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let workdir = dir.path().join("run");
        Self::start_in(dir, workdir, args).await
    }

    /// Like [`Up::start`] on a work directory of the caller's (a second `up` on the first's).
    pub async fn start_on(workdir: &Path, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, workdir.to_path_buf(), args).await
    }

    async fn start_in(dir: tempfile::TempDir, workdir: PathBuf, args: &[&str]) -> Self {
        let stderr = dir.path().join("up.stderr");
        let mut child = Command::new(bin("outrigger"))
            // Longer than any test needs: tests stop it themselves.
            .args(["up", "--duration", "900s", "--workdir"])
            .arg(&workdir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(&stderr).expect("up's stderr file"),
            ))
            .spawn()
            .expect("start outrigger up");
        let stdout = child.stdout.take().expect("up's stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let eof = Arc::new(AtomicBool::new(false));
        let (sink, at_end) = (lines.clone(), eof.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
            at_end.store(true, Ordering::SeqCst);
        });
        let mut up = Self {
            child,
            control_url: String::new(),
            trust_anchors: PathBuf::new(),
            reader_token_file: PathBuf::new(),
            edge: SocketAddr::from(([127, 0, 0, 1], 0)),
            lines,
            eof,
            stderr,
            workdir,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let output = up.output();
            let ready = output.iter().find_map(|l| parse_mesh_up(l));
            let anchors = output.iter().find_map(|l| parse_trust_anchors(l));
            if let (Some((url, edge)), Some((anchors, reader))) = (ready, anchors) {
                up.control_url = url;
                up.edge = edge;
                up.trust_anchors = anchors;
                up.reader_token_file = reader;
                return up;
            }
            up.assert_running();
            assert!(
                Instant::now() < deadline,
                "outrigger up did not come up within 180 s:\n{}",
                up.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Everything `up` printed on stdout so far.
    pub fn output(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// stdout and stderr so far, and where the mesh's own logs are, for failure messages.
    pub fn log(&self) -> String {
        format!(
            "{}\n{}\n(process logs in {})",
            self.output().join("\n"),
            std::fs::read_to_string(&self.stderr).unwrap_or_default(),
            self.logs().display()
        )
    }

    /// The directory with every process's log.
    pub fn logs(&self) -> PathBuf {
        self.workdir.join("logs")
    }

    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// `up`'s process id: its children (the control plane, the shop, the sidecars) are the
    /// processes whose parent this is.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The admin token `up` keeps to itself (`<workdir>/admin.token`), for tests that act as
    /// the operator on its control plane.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.workdir.join("admin.token"))
            .map(|t| t.trim().to_string())
            .unwrap_or_else(|e| panic!("up's admin token: {e}"))
    }

    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("outrigger up exited early ({status}):\n{}", self.log());
        }
    }

    /// SIGTERM (as Ctrl-C would), then its exit status within `within`; what it printed after
    /// the stop (its summary) is in [`Up::output`].
    pub async fn stop(&mut self, within: Duration) -> Option<ExitStatus> {
        self.terminate();
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // The reader thread may still hold the last lines: wait for it to reach the end
                // of stdout (at once, unless something `up` started outlived it holding it).
                let drained = Instant::now() + Duration::from_secs(10);
                while Instant::now() < drained && !self.eof.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // Give `up` the chance to stop its children; SIGKILL would orphan them.
            self.terminate();
            for _ in 0..300 {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `mesh up: control plane URL, N services + sidecars, edge sidecar ADDR; logs in DIR`.
fn parse_mesh_up(line: &str) -> Option<(String, SocketAddr)> {
    let rest = line.strip_prefix("mesh up: control plane ")?;
    let url = rest.split(',').next()?.trim().to_string();
    let edge = rest
        .split("edge sidecar ")
        .nth(1)?
        .split(';')
        .next()?
        .trim()
        .parse()
        .ok()?;
    Some((url, edge))
}

/// `trust anchors: PATH (e.g. outrigger --control-plane URL --trust-anchors PATH --token-file
/// READER top)`: (PATH, READER).
fn parse_trust_anchors(line: &str) -> Option<(PathBuf, PathBuf)> {
    let rest = line.strip_prefix("trust anchors: ")?;
    let (anchors, example) = rest.split_once(" (e.g. ")?;
    let reader = example
        .split("--token-file ")
        .nth(1)?
        .strip_suffix(" top)")?;
    Some((PathBuf::from(anchors), PathBuf::from(reader)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_mesh_up_line() {
        let (url, edge) = super::parse_mesh_up(
            "mesh up: control plane https://127.0.0.1:4000, 7 services + sidecars, edge sidecar 127.0.0.1:4100; logs in /tmp/x/logs",
        )
        .expect("parsed");
        assert_eq!(url, "https://127.0.0.1:4000");
        assert_eq!(edge.port(), 4100);
    }

    #[test]
    fn parses_the_trust_anchors_line() {
        let (anchors, reader) = super::parse_trust_anchors(
            "trust anchors: /tmp/x/data/trust-bundle.pem (e.g. outrigger --control-plane https://127.0.0.1:4000 --trust-anchors /tmp/x/data/trust-bundle.pem --token-file /tmp/x/reader.token top)",
        )
        .expect("parsed");
        assert_eq!(anchors.to_str(), Some("/tmp/x/data/trust-bundle.pem"));
        assert_eq!(reader.to_str(), Some("/tmp/x/reader.token"));
        assert!(
            super::parse_trust_anchors("trust anchors: /tmp/x/data/trust-bundle.pem").is_none()
        );
    }
}
