//! Issue 15 point 4: the shop in containers on this machine. The images are built offline
//! (deploy/build-images.sh, from this build's binaries), then `outrigger up --pods
//! --containers` runs the control plane, every app, sidecar and init step as podman
//! containers joined to pods it makes (the guard rails of `podnet`), and orders succeed over
//! mTLS between pods. Then a Job-style container, on a cluster without native sidecars,
//! ends its sidecar with `outrigger-proxy await --shutdown`.
//!
//! podman runs with deploy/podman/containers.conf (runc, ulimits, no default network).

use outrigger_tests::netns::{readable_tempdir, PodNet};
use outrigger_tests::{bin, up_pods};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

const TAG: &str = "ci";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn containers_conf() -> PathBuf {
    repo().join("deploy/podman/containers.conf")
}

fn podman() -> Command {
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", containers_conf());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_runs_in_containers_and_a_job_ends_its_sidecar() {
    let bins = bin("outrigger-proxy")
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let built = Command::new("bash")
        .arg(repo().join("deploy/build-images.sh"))
        .arg("--bin-dir")
        .arg(&bins)
        .args(["--tag", TAG])
        .output()
        .unwrap_or_else(|e| panic!("build-images.sh: {e}"));
    let listing = String::from_utf8_lossy(&built.stdout);
    assert!(
        built.status.success(),
        "building the images: {listing}\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    eprintln!("images (from this build's binaries):\n{listing}");
    for image in ["proxy", "init", "control", "shop"] {
        assert!(
            listing.contains(&format!("outrigger-{image}:{TAG}")),
            "{listing}"
        );
    }

    // The shop, every process a container in its pod.
    let dir = readable_tempdir("orr-containers");
    let conf = containers_conf();
    let (s, stdout) = up_pods::run(
        dir.path(),
        &["--containers", "--image-tag", TAG],
        &[("CONTAINERS_CONF", &conf)],
        Duration::from_secs(240),
    )
    .await;
    up_pods::assert_healthy_shop(&s);
    assert!(
        stdout.contains("every process is a podman container"),
        "{stdout}"
    );
    let left = podman()
        .args([
            "ps",
            "-a",
            "--format",
            "{{.Names}}",
            "--filter",
            "name=-sidecar-",
        ])
        .output()
        .unwrap_or_else(|e| panic!("podman ps: {e}"));
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "containers left behind: {}",
        String::from_utf8_lossy(&left.stdout)
    );

    // A Job without native sidecars: its container waits for the sidecar, runs, and ends it.
    let mut net = PodNet::create("10.204.11");
    let (pod, _) = net.pod("orr-job", "10.96.0.0/16", "");
    let network = format!("ns:/run/netns/{}", pod.name);
    let init = podman()
        .args(["run", "--rm", "--pull=never", "--network", &network])
        .args([
            "--cap-drop",
            "ALL",
            "--cap-add",
            "NET_ADMIN",
            "--cap-add",
            "NET_RAW",
        ])
        .arg(format!("localhost/outrigger-init:{TAG}"))
        .output()
        .unwrap_or_else(|e| panic!("podman run init: {e}"));
    assert!(
        init.status.success(),
        "the init container: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let sidecar_name = format!("orr-job-sidecar-{}", std::process::id());
    let mut sidecar = podman()
        .args(["run", "--rm", "--pull=never", "--name", &sidecar_name])
        .args(["--network", &network, "--user", "1337:1337", "--read-only"])
        .args(["--cap-drop", "ALL"])
        .arg(format!("localhost/outrigger-proxy:{TAG}"))
        .args(["--listen", "127.0.0.1:15001", "--upstream", "127.0.0.1:9"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("podman run sidecar: {e}"));
    let job = podman()
        .args(["run", "--rm", "--pull=never", "--network", &network])
        .args(["--user", "65532:65532", "--read-only", "--cap-drop", "ALL"])
        .args(["--entrypoint", "/usr/local/bin/outrigger-proxy"])
        .arg(format!("localhost/outrigger-proxy:{TAG}"))
        .args([
            "await",
            "--shutdown",
            "--",
            "/usr/local/bin/outrigger-proxy",
            "--version",
        ])
        .output()
        .unwrap_or_else(|e| panic!("podman run job: {e}"));
    assert!(
        job.status.success(),
        "the job: {}{}",
        String::from_utf8_lossy(&job.stdout),
        String::from_utf8_lossy(&job.stderr)
    );
    assert!(String::from_utf8_lossy(&job.stdout).contains("outrigger-proxy"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let ended = loop {
        if let Ok(Some(status)) = sidecar.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = podman()
        .args(["rm", "-f", "--ignore", &sidecar_name])
        .output();
    let _ = sidecar.kill();
    let _ = sidecar.wait();
    let ended =
        ended.unwrap_or_else(|| panic!("the job's sidecar was still running 30 s after the job"));
    assert!(ended.success(), "the sidecar ended with {ended}");
}
