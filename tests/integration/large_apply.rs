//! Issue 12, point 7: an apply is all or nothing at any size. 10,000 services as one YAML
//! stream go through the real control plane's API in under 5 s and every one is stored (the
//! stream used to be parsed from its start once per document, 319 s for this, and cut at
//! 10,000 documents with a 200); a body over the limit is a 413 that names it.

use outrigger_tests::control::Control;
use std::time::Duration;
use tokio::time::Instant;

const SERVICES: usize = 10_000;

fn services(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "kind: Service\nmetadata:\n  name: svc-{i:05}\nspec:\n  hosts: [svc-{i:05}.shop.local]\n---\n"
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_services_as_yaml_apply_in_under_5_s_and_all_are_stored() {
    let control = Control::start().await;
    let text = services(SERVICES);
    let started = Instant::now();
    let (status, body) = control.apply(&text).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}\n{}", control.log());
    let applied = body["applied"].as_array().map_or(0, Vec::len);
    assert_eq!(applied, SERVICES, "the apply reports every service");
    let (status, stored) = control.get("/v1/services").await;
    assert_eq!(status, 200, "{stored}");
    let stored = stored.as_array().map_or(0, Vec::len);
    assert_eq!(stored, SERVICES, "every service is stored");
    eprintln!("applied {SERVICES} services as YAML in {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "applying {SERVICES} services took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_a_413_naming_it() {
    let control = Control::start().await;
    // 33 MiB of comments: over the 32 MiB limit, whatever it holds.
    let line = format!("# {}\n", "x".repeat(1022));
    let text = line.repeat(33 * 1024);
    let (status, body) = control.apply(&text).await;
    assert_eq!(status, 413, "{body}");
    let reason = body["message"].as_str().unwrap_or_default();
    assert!(
        reason.contains("32 MiB") && reason.contains("APPLY_BODY_LIMIT"),
        "{body}"
    );
    let (_, stored) = control.get("/v1/services").await;
    assert_eq!(stored.as_array().map(Vec::len), Some(0), "{stored}");
}
