//! Issue 15 points 2 and 3: `outrigger inject` adds the sidecar to Kubernetes workloads, and
//! the manifests in deploy/kubernetes/ and the inject goldens are valid Kubernetes.
//!
//! The real `outrigger` binary injects each input of `tests/inject/` and its output must be
//! the golden file next to it, byte for byte (`UPDATE_GOLDEN=1` rewrites the goldens; review
//! the diff). Injecting a golden again changes nothing; stdin works like a file; and
//! deploy/kubernetes/shop-injected.yaml is exactly what inject makes of shop.yaml. Then
//! `deploy/validate-manifests.sh` checks every manifest and golden with
//! `kubernetes-validate --strict` for Kubernetes 1.29 to 1.34.

use outrigger_tests::bin;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `outrigger inject ARGS`, with `stdin` fed to it.
fn inject(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(bin("outrigger"))
        .arg("inject")
        .args(args)
        .current_dir(root())
        // inject connects nowhere: a control plane that answers nothing must not matter.
        .env("OUTRIGGER_CONTROL_PLANE", "https://127.0.0.1:9")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("outrigger inject: {e}"));
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin)
            .unwrap_or_else(|e| panic!("writing stdin: {e}"));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("outrigger inject: {e}"))
}

fn ok_stdout(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap_or_else(|e| panic!("{what}: not UTF-8: {e}"))
}

/// Where two texts first differ, for a readable failure.
fn first_difference(want: &str, got: &str) -> String {
    let (w, g): (Vec<_>, Vec<_>) = (want.lines().collect(), got.lines().collect());
    for i in 0..w.len().max(g.len()) {
        if w.get(i) != g.get(i) {
            return format!(
                "line {}:\n  golden: {:?}\n  output: {:?}",
                i + 1,
                w.get(i).unwrap_or(&"<end>"),
                g.get(i).unwrap_or(&"<end>")
            );
        }
    }
    "only in line endings or the final newline".into()
}

/// Compares `got` with the golden file `golden` (relative to the workspace), or rewrites it
/// under UPDATE_GOLDEN=1.
fn check_golden(golden: &str, got: &str) {
    let path = root().join(golden);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, got).unwrap_or_else(|e| panic!("{golden}: {e}"));
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("{golden}: {e} (UPDATE_GOLDEN=1 cargo test ... inject writes it)")
    });
    assert!(
        want == got,
        "{golden} is not what inject makes (UPDATE_GOLDEN=1 to accept the new output after \
         reviewing it): {}",
        first_difference(&want, got)
    );
}

/// (input, golden, extra flags)
const CASES: &[(&str, &str, &[&str])] = &[
    (
        "tests/inject/deployment.yaml",
        "tests/inject/deployment.golden.yaml",
        &[],
    ),
    (
        "tests/inject/statefulset.yaml",
        "tests/inject/statefulset.golden.yaml",
        &[],
    ),
    ("tests/inject/job.yaml", "tests/inject/job.golden.yaml", &[]),
    (
        "tests/inject/multi.yaml",
        "tests/inject/multi.golden.yaml",
        &[],
    ),
    ("tests/inject/pod.yaml", "tests/inject/pod.golden.yaml", &[]),
    (
        "tests/inject/job.yaml",
        "tests/inject/job.no-native.golden.yaml",
        &["--native-sidecar=false"],
    ),
    (
        "tests/inject/deployment.yaml",
        "tests/inject/deployment.no-native.golden.yaml",
        &["--native-sidecar=false"],
    ),
    (
        "deploy/kubernetes/shop.yaml",
        "deploy/kubernetes/shop-injected.yaml",
        &[],
    ),
];

#[test]
fn inject_matches_the_goldens_and_is_idempotent() {
    for (input, golden, flags) in CASES {
        let what = format!("inject {} -f {input}", flags.join(" "));
        let mut args = flags.to_vec();
        args.extend(["-f", input]);
        let got = ok_stdout(&inject(&args, b""), &what);
        check_golden(golden, &got);

        // Injecting the output again changes nothing, byte for byte.
        let mut again = flags.to_vec();
        again.extend(["-f", golden]);
        let twice = ok_stdout(&inject(&again, b""), &format!("inject of {golden}"));
        assert!(
            twice == got,
            "inject is not idempotent on {golden}: {}",
            first_difference(&got, &twice)
        );
    }
}

#[test]
fn inject_reads_stdin_and_keeps_other_documents_byte_for_byte() {
    let input = std::fs::read(root().join("tests/inject/multi.yaml"))
        .unwrap_or_else(|e| panic!("multi.yaml: {e}"));
    // What the file gives (the golden, checked by the test above; not read from disk here,
    // which UPDATE_GOLDEN may be rewriting meanwhile).
    let golden = ok_stdout(
        &inject(&["-f", "tests/inject/multi.yaml"], b""),
        "inject -f multi.yaml",
    );
    for args in [&[][..], &["-f", "-"][..]] {
        let got = ok_stdout(&inject(args, &input), "inject from stdin");
        assert!(
            got == golden,
            "stdin ({args:?}): {}",
            first_difference(&golden, &got)
        );
    }
    // The Service, the ConfigMap (with a `---` inside a block scalar) and the opted-out
    // Deployment are the input's own bytes.
    let text = String::from_utf8_lossy(&input);
    let docs: Vec<&str> = text.split("\n---\n").collect();
    assert_eq!(docs.len(), 4, "multi.yaml has four documents");
    for i in [0, 1, 3] {
        assert!(golden.contains(docs[i]), "document {} was changed", i + 1);
    }
    assert_eq!(golden.matches("name: outrigger-proxy").count(), 1);
}

#[test]
fn inject_errors_name_the_file_document_and_field_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let bad = dir.path().join("bad.yaml");
    let deployment = std::fs::read_to_string(root().join("tests/inject/deployment.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let text = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: x}}\n---\n{}",
        deployment.replace("port: admin", "port: admn")
    );
    std::fs::write(&bad, text).unwrap_or_else(|e| panic!("{e}"));
    let bad = bad.display().to_string();
    let out = inject(&["-f", &bad], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "nothing is written on an error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{bad}: document 2: spec.template.spec.containers[0].readinessProbe.httpGet.port: \
             container \"web\" has no port named \"admn\""
        )),
        "{err}"
    );
}

#[test]
fn manifests_and_goldens_pass_kubernetes_validate_strict() {
    let found = Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "kubernetes-validate is missing in CI: python3 -m pip install -r tests/requirements.txt"
        );
        eprintln!(
            "SKIPPED: kubernetes-validate is not installed (python3 -m pip install -r \
             tests/requirements.txt); the manifests were not validated"
        );
        return;
    }
    let out = Command::new("bash")
        .arg("deploy/validate-manifests.sh")
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("validate-manifests.sh: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for want in [
        "ok    deploy/kubernetes/control-plane.yaml  (Kubernetes 1.29)",
        "ok    deploy/kubernetes/shop-injected.yaml  (Kubernetes 1.34)",
        "ok    tests/inject/job.no-native.golden.yaml  (Kubernetes 1.29)",
    ] {
        assert!(text.contains(want), "{want}\n{text}");
    }
}
