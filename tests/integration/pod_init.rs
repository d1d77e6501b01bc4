//! Issue 14 point 1: `outrigger-proxy init` in a network namespace the test makes (only `lo`:
//! nothing in it can reach past this machine), with each iptables backend this machine has.
//! Applying twice gives the rules of once, `--dry-run` changes nothing, and `--uninstall`
//! removes exactly what init added (an operator's own rule survives).

use outrigger_tests::bin;
use outrigger_tests::netns::{stdout, Netns};

fn nat(ns: &Netns, iptables: &str) -> String {
    let out = ns.exec(iptables, &["-t", "nat", "-S"]);
    assert!(
        out.status.success(),
        "{iptables} -S: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

fn init(ns: &Netns, args: &[&str]) -> std::process::Output {
    ns.command(bin("outrigger-proxy"))
        .arg("init")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("outrigger-proxy init: {e}"))
}

#[test]
fn init_is_idempotent_previewable_and_removable_with_either_backend() {
    for (mode, iptables) in [("nft", "iptables-nft"), ("legacy", "iptables-legacy")] {
        let ns = Netns::create(&format!("orr-init-{mode}-{}", std::process::id()), "");
        // An operator's own rule, which init must leave alone.
        ns.iptables_with(
            iptables,
            &[
                "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "53", "-j", "RETURN",
            ],
        );
        let before = nat(&ns, iptables);

        let preview = init(&ns, &["--iptables-mode", mode, "--dry-run"]);
        assert!(preview.status.success());
        assert!(
            stdout(&preview).contains("-A OUTRIGGER_REDIRECT -p tcp -j REDIRECT --to-ports 15001")
        );
        assert_eq!(
            nat(&ns, iptables),
            before,
            "{mode}: --dry-run changed the rules"
        );

        let args = [
            "--iptables-mode",
            mode,
            "--outbound-ports-to-ignore",
            "22",
            "--subnets-to-ignore",
            "10.96.0.0/12",
        ];
        let out = init(&ns, &args);
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let once = nat(&ns, iptables);
        for rule in [
            "-A OUTPUT -p tcp -j OUTRIGGER_OUTPUT",
            "-A PREROUTING -p tcp -j OUTRIGGER_INBOUND",
            "-A OUTRIGGER_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A OUTRIGGER_OUTPUT -p tcp -m tcp --dport 22 -j RETURN",
            "-A OUTRIGGER_OUTPUT -d 10.96.0.0/12 -j RETURN",
            "-A OUTRIGGER_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
            "-A OUTRIGGER_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        ] {
            assert!(
                once.lines().any(|l| l == rule),
                "{mode}: no {rule:?} in\n{once}"
            );
        }
        assert!(init(&ns, &args).status.success());
        assert_eq!(
            nat(&ns, iptables),
            once,
            "{mode}: a second init changed the rules"
        );

        let out = init(&ns, &["--iptables-mode", mode, "--uninstall"]);
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            nat(&ns, iptables),
            before,
            "{mode}: --uninstall left something or took too much"
        );
    }
}

#[test]
fn auto_mode_follows_the_backend_that_already_holds_rules() {
    let ns = Netns::create(&format!("orr-init-auto-{}", std::process::id()), "");
    ns.iptables_with(
        "iptables-legacy",
        &["-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "RETURN"],
    );
    let out = init(&ns, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("iptables-legacy"));
    assert!(nat(&ns, "iptables-legacy").contains("OUTRIGGER_OUTPUT"));
    assert!(
        !nat(&ns, "iptables-nft").contains("OUTRIGGER_OUTPUT"),
        "rules split across backends"
    );
}
