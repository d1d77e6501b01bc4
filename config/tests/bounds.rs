//! Durations are bounded at validation (a value of centuries used to pass, then overflow an
//! `Instant` on the request path), and legal-but-pointless settings give warnings, not errors.

use outrigger_config::mesh::parse_resources;
use outrigger_config::validate::warnings;
use outrigger_config::{from_yaml_validated, from_yaml_warned, SidecarFile};

/// A sidecar file with every duration field set; `field` (a marker in the template) gets
/// `value`, every other field a sane value.
fn sidecar_with(field: &str, value: &str) -> String {
    let template = "\
proxy:
  drain_timeout: {drain_timeout}
  stats_window: {stats_window}
snapshot:
  service: order
  inbound:
    app: 127.0.0.1:8080
    timeout: {inbound_timeout}
  destinations:
    - name: payment
      connect_timeout: {connect_timeout}
      ewma: {default_rtt: {default_rtt}, decay: {decay}}
      outlier_detection: {base_ejection: {base_ejection}, max_ejection: {max_ejection}}
      retry_budget: {window: {window}}
      routes:
        - name: charge
          timeout: {timeout}
          per_try_timeout: {per_try_timeout}
          retries: {backoff: {base: {base}, max: {max}}}
          fault: {delay: {percent: 1, duration: {fault_delay}}}
";
    let fields = [
        "drain_timeout",
        "stats_window",
        "inbound_timeout",
        "connect_timeout",
        "default_rtt",
        "decay",
        "base_ejection",
        "max_ejection",
        "window",
        "timeout",
        "per_try_timeout",
        "base",
        "max",
        "fault_delay",
    ];
    let mut text = template.to_string();
    for f in fields {
        let v = if f == field { value } else { "10s" };
        text = text.replace(&format!("{{{f}}}"), v);
    }
    text
}

#[test]
fn the_template_is_valid_with_sane_values() {
    from_yaml_validated::<SidecarFile>(&sidecar_with("", "")).expect("valid");
}

#[test]
fn a_duration_of_centuries_is_refused_naming_its_field_line_and_column() {
    let e = from_yaml_validated::<SidecarFile>(&sidecar_with("timeout", "300years"))
        .expect_err("centuries must be refused");
    assert_eq!(e.errors.len(), 1, "{e}");
    let t = &e.errors[0];
    assert_eq!(t.path, "snapshot.destinations[0].routes[0].timeout");
    assert_eq!((t.line, t.column), (17, 20));
    assert_eq!(t.reason, "must be at most 1day");
    assert!(
        e.to_string()
            .contains("snapshot.destinations[0].routes[0].timeout (line 17, column 20)"),
        "{e}"
    );
}

#[test]
fn every_duration_field_is_bounded() {
    let cases = [
        ("drain_timeout", "proxy.drain_timeout"),
        ("stats_window", "proxy.stats_window"),
        ("inbound_timeout", "snapshot.inbound.timeout"),
        (
            "connect_timeout",
            "snapshot.destinations[0].connect_timeout",
        ),
        ("default_rtt", "snapshot.destinations[0].ewma.default_rtt"),
        ("decay", "snapshot.destinations[0].ewma.decay"),
        (
            "base_ejection",
            "snapshot.destinations[0].outlier_detection.base_ejection",
        ),
        (
            "max_ejection",
            "snapshot.destinations[0].outlier_detection.max_ejection",
        ),
        ("window", "snapshot.destinations[0].retry_budget.window"),
        ("timeout", "snapshot.destinations[0].routes[0].timeout"),
        (
            "per_try_timeout",
            "snapshot.destinations[0].routes[0].per_try_timeout",
        ),
        (
            "base",
            "snapshot.destinations[0].routes[0].retries.backoff.base",
        ),
        (
            "max",
            "snapshot.destinations[0].routes[0].retries.backoff.max",
        ),
        (
            "fault_delay",
            "snapshot.destinations[0].routes[0].fault.delay.duration",
        ),
    ];
    for (field, path) in cases {
        let e =
            from_yaml_validated::<SidecarFile>(&sidecar_with(field, "500years")).expect_err(field);
        assert!(
            e.errors
                .iter()
                .any(|x| x.path == path && x.reason.starts_with("must be at most")),
            "{field}: {e}"
        );
        // The largest value a field accepts is accepted: the bound is not off by one.
        let at_most = e
            .errors
            .iter()
            .find(|x| x.path == path)
            .and_then(|x| x.reason.strip_prefix("must be at most "))
            .expect("a bound")
            .to_string();
        // (A partner field may then complain, e.g. `max` below `base`; this one must not.)
        let ok = sidecar_with(field, &at_most);
        if let Err(e) = from_yaml_validated::<SidecarFile>(&ok) {
            assert!(
                !e.errors.iter().any(|x| x.path == path),
                "{field} = {at_most} refused: {e}"
            );
        }
    }
}

#[test]
fn mesh_resources_bound_their_durations_too() {
    let text = "\
kind: Policy
metadata: {name: payment}
spec:
  service: payment
  connect_timeout: 200years
  inbound: {timeout: 3000years}
---
kind: Route
metadata: {name: slow}
spec:
  service: payment
  timeout: 100000h
";
    let e = parse_resources(text).expect_err("must be rejected");
    let got: Vec<_> = e
        .errors
        .iter()
        .map(|x| (x.document, x.path.as_str(), x.line, x.reason.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (Some(0), "spec.connect_timeout", 5, "must be at most 1day"),
            (Some(0), "spec.inbound.timeout", 6, "must be at most 1day"),
            (Some(1), "spec.timeout", 12, "must be at most 1day"),
        ],
        "{e}"
    );
}

#[test]
fn a_per_try_timeout_longer_than_the_timeout_is_a_located_warning_not_an_error() {
    let text = sidecar_with("per_try_timeout", "30s");
    let (_, warned) = from_yaml_warned::<SidecarFile>(&text).expect("still valid");
    assert_eq!(warned.len(), 1, "{warned:?}");
    let w = &warned[0];
    assert_eq!(w.path, "snapshot.destinations[0].routes[0].per_try_timeout");
    assert_eq!((w.line, w.column), (18, 28));
    assert!(w.reason.contains("30s"), "{}", w.reason);
    assert!(w.reason.contains("timeout (10s)"), "{}", w.reason);

    // Equal is fine; so is a valid file with no per-try timeout at all.
    let (_, none) = from_yaml_warned::<SidecarFile>(&sidecar_with("", "")).expect("valid");
    assert!(none.is_empty(), "{none:?}");

    // A mesh Route without a timeout is measured against the default one (15s).
    let route =
        "kind: Route\nmetadata: {name: r}\nspec: {service: payment, per_try_timeout: 20s}\n";
    let resources = parse_resources(route).expect("a warning does not refuse");
    let w = warnings(&resources[0]);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].0.to_string(), "spec.per_try_timeout");
    assert!(w[0].1.contains("(15s)"), "{}", w[0].1);
}
