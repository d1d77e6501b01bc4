//! Issue 16 point 5: every binary says its version, the operator CLI has shell completions
//! and a help that says what it is, with its environment, examples and exit status.

use outrigger_tests::bin;
use std::process::Command;

fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin(program))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn every_binary_has_a_version_and_the_cli_completions_and_a_real_help() {
    for program in ["outrigger", "outrigger-proxy", "outrigger-control", "shop"] {
        let (ok, out) = run(program, &["--version"]);
        assert!(ok, "{program} --version");
        assert_eq!(
            out.trim(),
            format!("{program} {}", env!("CARGO_PKG_VERSION"))
        );
    }
    let (ok, help) = run("outrigger", &["--help"]);
    assert!(ok);
    let first = help.lines().next().unwrap_or_default();
    assert!(first.starts_with("The Outrigger operator CLI"), "{first}");
    for section in [
        "ENVIRONMENT:",
        "EXAMPLES:",
        "EXIT STATUS:",
        "OUTRIGGER_TOKEN",
    ] {
        assert!(help.contains(section), "--help lacks {section}:\n{help}");
    }
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef outrigger"),
        ("fish", "complete -c outrigger"),
    ] {
        let (ok, script) = run("outrigger", &["completions", shell]);
        assert!(ok, "completions {shell}");
        assert!(
            script.contains(marker),
            "{shell}: {}",
            &script[..script.len().min(200)]
        );
        for sub in ["validate", "canary", "completions"] {
            assert!(script.contains(sub), "{shell} completions lack {sub}");
        }
    }
    // `up --control-plane` would be ignored (up runs its own): refused, saying why.
    let out = Command::new(bin("outrigger"))
        .args([
            "up",
            "--control-plane",
            "https://127.0.0.1:9",
            "--duration",
            "1s",
        ])
        .output()
        .unwrap_or_else(|e| panic!("outrigger up: {e}"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a control plane of its own"), "{err}");
}
