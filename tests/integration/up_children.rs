//! Issue 12, point 6: `outrigger up` leaves no child behind, however it ends. SIGHUP (a
//! dropped SSH session) is a graceful stop like SIGTERM; after SIGKILL nothing of `up` runs,
//! and its children stop because each asked the kernel for SIGTERM when `up` dies.

use outrigger_tests::up::Up;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// `up`'s process: the child of this test process running with its work directory.
fn up_pid(up: &Up) -> u32 {
    let workdir = up.workdir().to_string_lossy().into_owned();
    let me = std::process::id();
    procs()
        .into_iter()
        .find(|(pid, (ppid, _))| {
            *ppid == me
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&workdir))
        })
        .map(|(pid, _)| pid)
        .unwrap_or_else(|| panic!("no `outrigger up` process for {workdir}"))
}

/// Every live process: pid → (parent pid, start time in clock ticks). Zombies count as gone.
fn procs() -> BTreeMap<u32, (u32, u64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the command's closing parenthesis: state, ppid, ... starttime (field 22).
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.first() == Some(&"Z") {
            continue;
        }
        if let (Some(ppid), Some(start)) = (
            f.get(1).and_then(|s| s.parse().ok()),
            f.get(19).and_then(|s| s.parse().ok()),
        ) {
            out.insert(pid, (ppid, start));
        }
    }
    out
}

async fn no_child_left_after(signal: &str) {
    let mut up = Up::start(&["--orders-per-sec", "2", "--shoppers", "1"]).await;
    let pid = up_pid(&up);
    let children: Vec<(u32, u64)> = procs()
        .into_iter()
        .filter(|(_, (ppid, _))| *ppid == pid)
        .map(|(p, (_, start))| (p, start))
        .collect();
    // The control plane, seven shop services and eight sidecars.
    assert!(children.len() >= 16, "children of up: {children:?}");
    let sent = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -{signal} {pid}");
    // Sidecars drain before they exit; `up`'s own stop gives them 10 s before SIGKILL.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = procs();
        let left: Vec<u32> = children
            .iter()
            .filter(|(p, start)| now.get(p).is_some_and(|(_, s)| s == start))
            .map(|(p, _)| *p)
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after SIG{signal} to up, still running: {left:?}\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = up.stop(Duration::from_secs(30)).await;
    if signal == "HUP" {
        // Stopped as on SIGTERM: by its own hand, with its summary, not by the signal.
        assert!(
            status.is_some_and(|s| s.success()),
            "up after SIGHUP: {status:?}\n{}",
            up.log()
        );
    }
}

// One `up` at a time: two starting together can race for the ports each reserves and
// releases before its children bind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_leaves_no_child_running_after_sigkill_or_sighup() {
    no_child_left_after("KILL").await;
    no_child_left_after("HUP").await;
}
