//! The mesh CA against a real control plane: bootstrap tokens, CSR signing and its refusals,
//! the root key's secrecy, an operator's root, and the mTLS settings in pushed snapshots.

use crate::harness::{call, eventually, Control, SHOP};
use crate::pki::{certificate, chains_to, csr, der, identity, roots, sans, sign, token, validity};
use http::Method;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const WAIT: Duration = Duration::from_secs(10);

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The generated root's key files under `<data>/ca`.
fn key_files(c: &Control) -> Vec<PathBuf> {
    let dir = c.dir.path().join("data").join("ca");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(".key.pem"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn metric(text: &Value, line: &str) -> bool {
    text.as_str().is_some_and(|t| t.lines().any(|l| l == line))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_and_a_csr_give_a_leaf_with_exactly_the_spiffe_san_that_chains_to_the_bundle() {
    let c = Control::start();
    let t = token(&c, "payment", 600).await;
    assert!(t.starts_with("otb_"), "{t}");
    let before = unix_now();
    let reply = certificate(&c, &t, "payment").await;
    let leaf = reply["certificate_chain"].as_str().expect("chain");
    assert_eq!(reply["identity"], identity("payment"));
    assert_eq!(sans(leaf), [format!("URI:{}", identity("payment"))]);

    // Default lifetime: 24 h from now.
    let (_, not_after) = validity(leaf);
    assert_eq!(reply["not_after_unix"], json!(not_after));
    assert!(
        (before + 86_400..=unix_now() + 86_400).contains(&not_after),
        "{not_after}"
    );
    assert!(reply["expires_at"]
        .as_str()
        .is_some_and(|s| s.ends_with('Z')));

    // The bundle served with it is the one root listed, and the leaf chains to it.
    let bundle = reply["trust_bundle"].as_array().expect("bundle");
    assert_eq!(bundle.len(), 1);
    let root = bundle[0].as_str().expect("PEM");
    assert!(chains_to(leaf, root));
    let listed = roots(&c).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["active"], true);
    assert_eq!(listed[0]["unexpired_leaves"], 1);

    // The same token serves a renewal, with another key.
    let again = certificate(&c, &t, "payment").await;
    assert_ne!(again["certificate_chain"], reply["certificate_chain"]);
    assert_eq!(roots(&c).await[0]["unexpired_leaves"], 2);

    let (_, m) = c.get("/metrics").await;
    assert!(
        metric(&m, "outrigger_control_certificates_issued_total 2"),
        "{m}"
    );
    assert!(metric(&m, "outrigger_control_ca_roots 1"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_why_with_401_403_and_400() {
    let c = Control::start();
    let good = csr(&[&identity("payment")]);

    // Tokens are minted with the API token only.
    let (status, _) = call(
        &c,
        Method::POST,
        "/v1/identity/tokens",
        Some(r#"{"service":"payment"}"#),
        None,
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = c
        .call(
            Method::POST,
            "/v1/identity/tokens",
            Some(r#"{"service":"Bad Name"}"#),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // No token or an unknown one: 401; a reader token: 403.
    for t in [None, Some("otb_nope")] {
        let (status, body) = sign(&c, t, &good).await;
        assert_eq!(status, 401, "{t:?}: {body}");
        assert_eq!(body["reason"], "unauthorized");
        assert!(body["message"].as_str().is_some_and(|r| !r.is_empty()));
    }
    let (status, body) = sign(&c, Some(crate::harness::READER), &good).await;
    assert_eq!(status, 403, "{body}");

    let t = token(&c, "payment", 600).await;
    // Another service's identity, extra names, or none: 403.
    for (uris, why) in [
        (vec![identity("order")], "another service"),
        (vec![identity("payment"), identity("order")], "an extra SAN"),
        (
            vec!["spiffe://other.example/service/payment".to_string()],
            "another trust domain",
        ),
        (vec![], "no SAN"),
    ] {
        let uris: Vec<&str> = uris.iter().map(String::as_str).collect();
        let (status, body) = sign(&c, Some(&t), &csr(&uris)).await;
        assert_eq!(status, 403, "{why}: {body}");
        assert_eq!(body["reason"], "forbidden");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|r| r.contains(&identity("payment"))),
            "{body}"
        );
    }

    // Malformed: 400.
    for bad in [
        "",
        "not a csr",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ] {
        let (status, body) = sign(&c, Some(&t), bad).await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert!(body["message"]
            .as_str()
            .is_some_and(|r| r.starts_with("malformed CSR")));
    }
    let (status, body) = call(
        &c,
        Method::POST,
        "/v1/identity/certificates",
        Some("{not json"),
        Some(&t),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    // A CSR changed after signing: the signature does not verify.
    let mut tampered = der(&good);
    let at = tampered
        .windows(7)
        .position(|w| w == b"payment")
        .expect("the identity in the CSR");
    tampered[at] = b'P';
    let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", tampered));
    let (status, body) = sign(&c, Some(&t), &tampered).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|r| r.contains("signature")),
        "{body}"
    );

    // A token of 1 s: refused as expired once it has run out.
    let short = token(&c, "payment", 1).await;
    let body = eventually(WAIT, "the 1 s token to expire", || async {
        let (status, body) = sign(&c, Some(&short), &good).await;
        (status == 401).then_some(body)
    })
    .await;
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|r| r.contains("expired")),
        "{body}"
    );

    let (_, m) = c.get("/metrics").await;
    assert!(
        metric(
            &m,
            "outrigger_control_csr_rejected_total{reason=\"identity\"} 4"
        ),
        "{m}"
    );
    assert!(
        metric(
            &m,
            "outrigger_control_csr_rejected_total{reason=\"signature\"} 1"
        ),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_key_is_private_never_served_and_never_logged() {
    let mut c = Control::start();
    let keys = key_files(&c);
    assert_eq!(keys.len(), 1, "one generated root key");
    let mode = std::fs::metadata(&keys[0])
        .expect("key file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    let key_pem = std::fs::read_to_string(&keys[0]).expect("key");
    // The base64 body without line breaks would not be found in JSON; each line would.
    let secret_lines: Vec<&str> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .collect();
    assert!(!secret_lines.is_empty());

    c.apply(SHOP).await;
    let t = token(&c, "order", 600).await;
    let mut answers = vec![certificate(&c, &t, "order").await];
    for path in [
        "/v1/ca/roots",
        "/metrics",
        "/v1/services",
        "/v1/sidecars",
        "/v1/registry/instances",
    ] {
        answers.push(c.get(path).await.1);
    }
    answers.push(c.call(Method::POST, "/v1/ca/roots", None).await.1);
    let mut stream = c.stream("order", "order-1").await;
    answers.push(stream.snapshot(WAIT).await);
    drop(stream);
    let text: String = answers.iter().map(Value::to_string).collect();
    let logs = c.logs.lock().expect("logs").join("\n");
    for line in &secret_lines {
        assert!(!text.contains(line), "the key is in an API answer");
        assert!(!logs.contains(line), "the key is in the log");
    }
    assert!(!logs.contains(&t), "the bootstrap token is in the log");
    assert!(logs.contains("certificate issued"), "{logs}");

    // The root and the tokens survive kill -9.
    let before: Vec<Value> = roots(&c).await;
    c.kill9_and_restart();
    assert_eq!(roots(&c).await, before);
    certificate(&c, &t, "order").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_root_signs_and_its_files_are_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "operator root");
    let root = params.self_signed(&key).expect("root");
    let cert_file = dir.path().join("root.pem");
    let key_file = dir.path().join("root.key");
    std::fs::write(&cert_file, root.pem()).expect("write");
    std::fs::write(&key_file, key.serialize_pem()).expect("write");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    let c = Control::start_with(&[
        "--ca-cert",
        cert_file.to_str().expect("path"),
        "--ca-key",
        key_file.to_str().expect("path"),
        "--trust-domain",
        "shop.example",
    ]);
    let listed = roots(&c).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["generated"], false);
    assert!(key_files(&c).is_empty(), "no key of our own");

    let t = token(&c, "user", 600).await;
    let (status, reply) = sign(&c, Some(&t), &csr(&["spiffe://shop.example/service/user"])).await;
    assert_eq!(status, 200, "{reply}");
    let leaf = reply["certificate_chain"].as_str().expect("leaf");
    assert!(chains_to(leaf, &root.pem()));
    assert_eq!(reply["trust_bundle"], json!([root.pem()]));

    // A key that is not the certificate's: the control plane refuses to start.
    let other = dir.path().join("other.key");
    std::fs::write(
        &other,
        rcgen::KeyPair::generate().expect("key").serialize_pem(),
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outrigger-control"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data2"))
        .arg("--ca-cert")
        .arg(&cert_file)
        .arg("--ca-key")
        .arg(&other)
        .env("OUTRIGGER_TOKEN", "t")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not belong"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_carry_the_mode_the_bundle_destination_identities_and_inbound_allow() {
    let c = Control::start();
    c.apply(SHOP).await;
    // Whatever the example says: only order may call payment, anyone may call order.
    let (status, body) = c
        .apply(
            "kind: Policy\nmetadata: {name: payment-callers}\nspec: {service: payment, allow: [order]}\n---\nkind: Policy\nmetadata: {name: order-inbound}\nspec: {service: order}\n",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    c.register("payment", "v1", 15106, 30).await;
    let t = token(&c, "order", 600).await;
    let bundle = certificate(&c, &t, "order").await["trust_bundle"].clone();

    let mut order = c.stream("order", "order-1").await;
    let line = order.snapshot(WAIT).await;
    let s = &line["snapshot"];
    assert_eq!(s["mtls"]["mode"], "strict");
    assert_eq!(s["mtls"]["trust_domain"], "outrigger.local");
    assert_eq!(s["mtls"]["trust_bundle"], bundle);
    let ids: Vec<&Value> = s["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .map(|d| &d["identity"])
        .collect();
    assert_eq!(
        ids,
        [
            &json!(identity("catalog")),
            &json!(identity("inventory")),
            &json!(identity("payment"))
        ]
    );
    assert_eq!(
        s["destinations"][2]["endpoints"][0]["address"], "127.0.0.1:15106",
        "endpoints stay the sidecars' inbound addresses"
    );
    assert_eq!(s["inbound"].get("allow"), None, "no allow-list for order");

    let mut payment = c.stream("payment", "payment-1").await;
    let p = payment.snapshot(WAIT).await;
    assert_eq!(
        p["snapshot"]["inbound"]["allow"],
        json!([identity("order")])
    );

    // A rotation changes every sidecar's bundle: pushed under a new revision.
    let (status, rotated) = c.call(Method::POST, "/v1/ca/roots", None).await;
    assert_eq!(status, 201, "{rotated}");
    let next = order.snapshot(WAIT).await;
    assert_eq!(next["version"], rotated["revision"]);
    assert_eq!(
        next["snapshot"]["mtls"]["trust_bundle"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let next = payment.snapshot(WAIT).await;
    assert_eq!(next["version"], rotated["revision"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_and_trust_domain_come_from_the_flags() {
    let c = Control::start_with(&["--mtls", "permissive", "--trust-domain", "shop.example"]);
    c.apply(SHOP).await;
    let mut order = c.stream("order", "order-1").await;
    let s = order.snapshot(WAIT).await["snapshot"].clone();
    assert_eq!(s["mtls"]["mode"], "permissive");
    assert_eq!(s["mtls"]["trust_domain"], "shop.example");
    assert_eq!(
        s["destinations"][0]["identity"],
        "spiffe://shop.example/service/catalog"
    );
    drop(order);
    drop(c);

    let c = Control::start_with(&["--mtls", "off"]);
    c.apply(SHOP).await;
    let mut order = c.stream("order", "order-1").await;
    let s = order.snapshot(WAIT).await["snapshot"].clone();
    assert_eq!(s["mtls"]["mode"], "off");
    assert!(s["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .all(|d| d.get("identity").is_none()));
}
