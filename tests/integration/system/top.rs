//! The `top` step of the shared system test (`super`): `outrigger top` against the mesh.

use crate::top::top;
use outrigger_tests::bin;
use outrigger_tests::up::Up;
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

const SHOP: [&str; 5] = ["user", "catalog", "order", "inventory", "payment"];

/// The service table's lines: from the header to the first blank line.
fn service_table(text: &str) -> Vec<&str> {
    text.lines().take_while(|l| !l.trim().is_empty()).collect()
}

/// Runs `outrigger top` under a pseudo-terminal `cols` wide, presses `s` once a frame is on
/// screen and `q` once the sort changed, and prints everything the terminal received. Exits
/// with top's exit code, or 99 if that did not happen in time.
const PTY: &str = r#"
import os, pty, sys, time, select, fcntl, termios, struct, signal
cols = int(sys.argv[1]); cmd = sys.argv[2:]
pid, fd = pty.fork()
if pid == 0:
    os.execv(cmd[0], cmd)
fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, cols, 0, 0))
out = b""; deadline = time.time() + 90
keys = [(b"storefront", b"s"), (b"sort: req/s", b"q")]
while True:
    if time.time() > deadline:
        os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0)
        sys.stdout.buffer.write(out); sys.exit(99)
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        try: data = os.read(fd, 65536)
        except OSError: break
        if not data: break
        out += data
    if keys and keys[0][0] in out:
        os.write(fd, keys.pop(0)[1])
_, status = os.waitpid(pid, 0)
sys.stdout.buffer.write(out)
sys.exit(os.waitstatus_to_exitcode(status))
"#;

/// `outrigger top` against a real mesh started by `outrigger up`, given nothing but the control
/// plane's URL, its trust anchors and a reader token (what `up` prints): piped, it prints plain
/// text (no escape codes) with `up`'s columns and every shop service at a non-zero rate; under
/// a pseudo-terminal it takes the alternate screen, fits a narrow terminal, answers keys and
/// gives the screen back on `q`. (That the control plane learns each sidecar's admin address
/// from its push stream, which is how `top` finds them, needs no `up`: it is
/// `top::the_control_plane_lists_each_sidecar_s_admin_address`.)
///
/// Returns the header of `top`'s service table, for
/// [`up_s_summary_has_top_s_columns`] once `up` has stopped.
pub(super) async fn top_shows_a_running_mesh_as_plain_text_and_on_a_terminal(
    up: &mut Up,
) -> String {
    let url = up.control_url.clone();
    assert!(url.starts_with("https://"), "{url}");
    // What `up` printed: the control plane's trust bundle, and a reader token (not the admin's).
    let anchors = up.trust_anchors.display().to_string();
    let reader = up.reader_token_file.display().to_string();
    let connect = [
        "--control-plane",
        url.as_str(),
        "--trust-anchors",
        anchors.as_str(),
        "--token-file",
        reader.as_str(),
    ];

    // Piped: plain text, every shop service at a non-zero rate once traffic flows. Logins
    // come in bursts, so a rate counts once seen in any snapshot; every snapshot must list
    // all five services once it lists any, and every sidecar in sync.
    let mut busy: BTreeSet<String> = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let last = loop {
        up.assert_running();
        let out = top(&[&connect[..], &["--once", "--interval", "1s"][..]].concat());
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "top --once failed: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.stdout.contains(&0x1b),
            "escape codes in plain output:\n{text}"
        );
        let table = service_table(&text);
        assert!(table.len() > 1 || text.contains("no requests"), "{text}");
        for line in table.iter().skip(1) {
            let cells: Vec<&str> = line.split_whitespace().collect();
            let rps: f64 = cells.get(1).and_then(|r| r.parse().ok()).unwrap_or(0.0);
            if rps > 0.0 {
                busy.insert(cells[0].to_string());
            }
        }
        let sidecars: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("SIDECAR"))
            .skip(1)
            .collect();
        let all_in_sync =
            sidecars.len() == 8 && sidecars.iter().all(|l| l.trim_end().ends_with("in sync"));
        if SHOP.iter().all(|s| busy.contains(*s)) && all_in_sync {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "not every service showed traffic ({busy:?}) or a sidecar is not in sync:\n{text}"
        );
    };
    for s in SHOP {
        assert!(
            service_table(&last).iter().any(|l| l.starts_with(s)),
            "{s} missing:\n{last}"
        );
    }
    // Each sidecar's admin address, as the control plane learned it.
    assert!(
        last.lines()
            .any(|l| l.starts_with("storefront") && l.contains("127.0.0.1:")),
        "{last}"
    );

    // On a terminal 50 columns wide: the alternate screen, the table cut to fit, `s` sorts,
    // `q` quits with exit 0 and gives the screen back. No mouse capture.
    let out = tokio::task::spawn_blocking({
        let (top, connect) = (bin("outrigger"), connect.map(str::to_string));
        move || {
            Command::new("python3")
                .args(["-c", PTY, "50"])
                .arg(top)
                .arg("top")
                .args(&connect)
                .args(["--interval", "500ms"])
                .stdin(Stdio::null())
                .output()
                .expect("python3 with a pty")
        }
    })
    .await
    .expect("pty runner");
    let screen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "top under a terminal: {}\n{screen:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let enter = screen
        .find("\x1b[?1049h")
        .expect("enters the alternate screen");
    let leave = screen
        .rfind("\x1b[?1049l")
        .expect("leaves the alternate screen");
    assert!(enter < leave, "{screen:?}");
    let drawn = &screen[enter..leave];
    assert!(
        drawn.contains("SERVICE") && drawn.contains("REQ/S"),
        "{drawn:?}"
    );
    assert!(
        drawn.contains("sort: req/s"),
        "`s` changed nothing: {drawn:?}"
    );
    assert!(
        !drawn.contains("CANARY"),
        "a line wider than the terminal was drawn: {drawn:?}"
    );
    assert!(
        !screen[leave..].contains("SERVICE"),
        "drew after leaving: {screen:?}"
    );
    assert!(screen.contains("\x1b[?25h"), "the cursor stays hidden");
    for mouse in ["\x1b[?1000h", "\x1b[?1002h", "\x1b[?1003h", "\x1b[?1006h"] {
        assert!(!screen.contains(mouse), "mouse capture: {screen:?}");
    }

    service_table(&last)[0].to_string()
}

/// Same columns as `up`: its summary table, printed when it stops (cleanly: `super` checks its
/// exit status), has top's header.
pub(super) fn up_s_summary_has_top_s_columns(up: &Up, top_header: &str) {
    let printed = up.output();
    let summary = printed
        .iter()
        .skip_while(|l| !l.starts_with("summary after"))
        .nth(1)
        .expect("up printed its summary");
    assert_eq!(*summary, top_header);
}
