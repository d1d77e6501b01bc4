//! Root rotation against a real control plane: a new signer, a two-root bundle, drops refused
//! while leaves chain to the old root, forced drops, drops once leaves expired; and the CLI.

use crate::harness::{cli, eventually, Control};
use crate::pki::{certificate, chains_to, roots, token};
use http::Method;
use serde_json::Value;
use std::time::Duration;

fn id(root: &Value) -> String {
    root["id"].as_str().expect("id").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_signs_with_the_new_root_and_keeps_the_old_one_while_its_leaves_live() {
    let c = Control::start();
    let t = token(&c, "payment", 600).await;
    let old_leaf = certificate(&c, &t, "payment").await;
    let old = id(&roots(&c).await[0]);

    let (status, rotated) = c.call(Method::POST, "/v1/ca/roots", None).await;
    assert_eq!(status, 201, "{rotated}");
    let new = id(&rotated["root"]);
    assert_ne!(new, old);
    // It joins the bundle pending; with no sidecar connected, nobody is waited for.
    assert_eq!(rotated["root"]["active"], false);
    assert_eq!(rotated["pending"], new.as_str());
    assert_eq!(rotated["active"], old.as_str());
    eventually(Duration::from_secs(10), "the new root to sign", || async {
        let (_, s) = c.get("/v1/ca/status").await;
        (s["active"] == new.as_str() && s["pending"].is_null()).then_some(())
    })
    .await;
    let listed = roots(&c).await;
    assert_eq!(
        listed
            .iter()
            .map(|r| (id(r), r["active"].clone(), r["unexpired_leaves"].clone()))
            .collect::<Vec<_>>(),
        [
            (old.clone(), Value::Bool(false), Value::from(1)),
            (new.clone(), Value::Bool(true), Value::from(0))
        ]
    );

    // New leaves come from the new root; the bundle has both, so old and new leaves verify.
    let new_leaf = certificate(&c, &t, "payment").await;
    let bundle: Vec<&str> = new_leaf["trust_bundle"]
        .as_array()
        .expect("bundle")
        .iter()
        .map(|p| p.as_str().expect("PEM"))
        .collect();
    assert_eq!(bundle.len(), 2);
    let leaf = new_leaf["certificate_chain"].as_str().expect("leaf");
    assert!(chains_to(leaf, bundle[1]), "signed by the new root");
    assert!(!chains_to(leaf, bundle[0]));
    let old_pem = old_leaf["certificate_chain"].as_str().expect("leaf");
    assert!(chains_to(old_pem, bundle[0]));

    // The old root still has an unexpired leaf: 409 naming how many and until when.
    let (status, body) = c
        .call(Method::DELETE, &format!("/v1/ca/roots/{old}"), None)
        .await;
    assert_eq!(status, 409, "{body}");
    let reason = body["message"].as_str().expect("reason");
    assert!(
        reason.contains("1 unexpired leaf") && reason.contains("force=true"),
        "{reason}"
    );
    // The active root never goes, not even by force; unknown roots are 404.
    let (status, body) = c
        .call(
            Method::DELETE,
            &format!("/v1/ca/roots/{new}?force=true"),
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["message"]
        .as_str()
        .is_some_and(|r| r.contains("active")));
    let (status, _) = c
        .call(Method::DELETE, "/v1/ca/roots/0000000000000000", None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = crate::harness::call(
        &c,
        Method::DELETE,
        &format!("/v1/ca/roots/{old}?force=true"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 401, "dropping needs the API token");

    // Forced: gone from the list and the bundle, with a warning in the log.
    let (status, body) = c
        .call(
            Method::DELETE,
            &format!("/v1/ca/roots/{old}?force=true"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["forced_over_leaves"], 1);
    assert_eq!(
        roots(&c).await.iter().map(id).collect::<Vec<_>>(),
        std::slice::from_ref(&new)
    );
    let after = certificate(&c, &t, "payment").await;
    assert_eq!(after["trust_bundle"].as_array().map(Vec::len), Some(1));
    let logs = c.logs.lock().expect("logs").join("\n");
    assert!(
        logs.lines()
            .any(|l| l.contains("\"level\":\"WARN\"") && l.contains("dropped by force")),
        "{logs}"
    );
    let (_, m) = c.get("/metrics").await;
    assert!(
        m.as_str()
            .is_some_and(|t| t.contains("outrigger_control_ca_roots 1")),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_short_lived_leaves_the_old_root_goes_without_force_once_they_expired() {
    let c = Control::start_with(&["--cert-lifetime", "2s"]);
    let t = token(&c, "order", 600).await;
    let leaf = certificate(&c, &t, "order").await;
    let not_after = leaf["not_after_unix"].as_i64().expect("not_after_unix");
    let old = id(&roots(&c).await[0]);
    let (status, _) = c.call(Method::POST, "/v1/ca/roots", None).await;
    assert_eq!(status, 201);

    let (status, body) = c
        .call(Method::DELETE, &format!("/v1/ca/roots/{old}"), None)
        .await;
    assert_eq!(status, 409, "{body}");

    let dropped = eventually(
        Duration::from_secs(15),
        "the old root's leaf to expire",
        || async {
            let (status, body) = c
                .call(Method::DELETE, &format!("/v1/ca/roots/{old}"), None)
                .await;
            match status {
                200 => Some(body),
                409 => None,
                other => panic!("{other}: {body}"),
            }
        },
    )
    .await;
    assert_eq!(dropped["forced_over_leaves"], 0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    assert!(now > not_after, "dropped before the leaf expired");
    assert_eq!(roots(&c).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_mints_tokens_lists_rotates_and_drops_roots() {
    let c = Control::start();
    let (code, out, err) = cli(
        &c,
        Some(crate::harness::TOKEN),
        &["token", "payment", "--ttl", "10m"],
    );
    assert_eq!(code, 0, "{err}");
    let t = out.trim();
    assert!(t.starts_with("otb_") && !t.contains(' '), "{out}");
    assert!(err.contains("expires"), "{err}");
    certificate(&c, t, "payment").await;

    let (code, _, err) = cli(&c, None, &["token", "payment"]);
    assert_eq!(code, 1);
    assert!(err.contains("no token given"), "{err}");
    let (code, _, err) = cli(&c, Some(crate::harness::READER), &["token", "payment"]);
    assert_eq!(code, 1);
    assert!(err.contains("403") && err.contains("reader"), "{err}");

    let old = id(&roots(&c).await[0]);
    let (code, out, err) = cli(&c, Some(crate::harness::READER), &["ca", "roots"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ID"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(&old) && l.contains("yes") && l.contains(" 1 ")),
        "{out}"
    );

    let (code, out, err) = cli(&c, Some(crate::harness::TOKEN), &["ca", "rotate"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pending"), "{out}");
    // No sidecar is connected, so nobody is waited for.
    eventually(Duration::from_secs(10), "the new root to sign", || async {
        let (_, out, _) = cli(
            &c,
            Some(crate::harness::READER),
            &["ca", "status", "-o", "json"],
        );
        let status: Value = serde_json::from_str(&out).ok()?;
        status["pending"].is_null().then_some(())
    })
    .await;
    let (_, out, _) = cli(
        &c,
        Some(crate::harness::READER),
        &["ca", "roots", "-o", "json"],
    );
    let listed: Vec<Value> = serde_json::from_str(&out).expect("json");
    assert_eq!(listed.len(), 2);

    let (code, _, err) = cli(&c, Some(crate::harness::TOKEN), &["ca", "drop", &old]);
    assert_eq!(code, 1);
    assert!(err.contains("409") && err.contains("unexpired"), "{err}");
    let (code, out, err) = cli(
        &c,
        Some(crate::harness::TOKEN),
        &["ca", "drop", &old, "--force"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("dropped over 1"), "{out}");
    assert_eq!(roots(&c).await.len(), 1);
}
