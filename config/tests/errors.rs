//! Config errors must name the field path, line, column and reason.

use outrigger_config::mesh::parse_resources;
use outrigger_config::{from_yaml_validated, SidecarFile};

fn sidecar_err(text: &str) -> outrigger_config::FieldError {
    let e = from_yaml_validated::<SidecarFile>(text).expect_err("must be rejected");
    assert_eq!(e.errors.len(), 1, "{e}");
    e.errors[0].clone()
}

#[test]
fn type_error_names_path_line_and_column() {
    let e = sidecar_err(
        "snapshot:\n  service: order\n  destinations:\n    - name: payment\n      endpoints:\n        - address: not-an-address\n",
    );
    assert_eq!(e.path, "snapshot.destinations[0].endpoints[0].address");
    assert_eq!((e.line, e.column), (6, 20));
    assert!(e.reason.contains("socket address"), "{}", e.reason);
    assert!(
        !e.reason.contains("line"),
        "location repeated in reason: {}",
        e.reason
    );
}

#[test]
fn unknown_field_is_rejected_with_its_place() {
    let e = sidecar_err("snapshot:\n  service: order\n  destinatoins: []\n");
    assert_eq!(e.path, "snapshot.destinatoins");
    assert_eq!(e.line, 3);
    assert!(
        e.reason.contains("unknown field `destinatoins`"),
        "{}",
        e.reason
    );
}

#[test]
fn missing_field_is_reported() {
    let e = sidecar_err("snapshot:\n  destinations: []\n");
    assert!(e.reason.contains("missing field `service`"), "{}", e.reason);
}

#[test]
fn semantic_errors_are_located() {
    let text = "snapshot:\n  service: order\n  destinations:\n    - name: payment\n      routes:\n        - name: slow\n          timeout: 0s\n    - name: payment\n";
    let e = from_yaml_validated::<SidecarFile>(text).expect_err("must be rejected");
    let msgs: Vec<String> = e.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(e.errors.len(), 2, "{msgs:?}");
    let d = &e.errors[0];
    assert_eq!(d.path, "snapshot.destinations[1].name");
    assert_eq!(d.line, 8);
    assert!(d.reason.contains("defined twice"));
    let t = &e.errors[1];
    assert_eq!(t.path, "snapshot.destinations[0].routes[0].timeout");
    assert_eq!((t.line, t.column), (7, 20));
    assert_eq!(t.reason, "must be greater than zero");
    assert!(msgs[1].contains("line 7, column 20"), "{}", msgs[0]);
}

#[test]
fn bad_duration_says_why() {
    let e = sidecar_err("proxy:\n  drain_timeout: soon\nsnapshot:\n  service: order\n");
    assert_eq!(e.path, "proxy.drain_timeout");
    assert_eq!(e.line, 2);
}

#[test]
fn resource_errors_name_the_document() {
    let text = "kind: Service\nmetadata: {name: payment}\nspec: {}\n---\nkind: Route\nmetadata: {name: Bad Name}\nspec:\n  service: payment\n  match: {path_prefix: charge}\n";
    let e = parse_resources(text).expect_err("must be rejected");
    assert_eq!(e.errors.len(), 2, "{e}");
    assert!(e.errors.iter().all(|x| x.document == Some(1)));
    assert_eq!(e.errors[0].path, "metadata.name");
    assert_eq!(e.errors[0].line, 6);
    assert_eq!(e.errors[1].path, "spec.match.path_prefix");
    assert_eq!(e.errors[1].line, 9);
}

#[test]
fn unknown_kind_is_rejected() {
    let e =
        parse_resources("kind: Gateway\nmetadata: {name: x}\nspec: {}\n").expect_err("rejected");
    assert_eq!(e.errors[0].path, "kind");
    assert!(
        e.errors[0].reason.contains("unknown variant `Gateway`"),
        "{}",
        e.errors[0].reason
    );
}

#[test]
fn json_is_accepted() {
    let r = parse_resources(r#"{"kind":"Service","metadata":{"name":"user"},"spec":{}}"#)
        .expect("json");
    assert_eq!(r.len(), 1);
}

#[test]
fn a_syntax_error_is_reported_once_and_parsing_ends() {
    let text =
        "kind: Service\nmetadata: {name: a}\nspec: {}\n---\nkind: [unclosed\n---\nkind: Service\n";
    let e = parse_resources(text).expect_err("rejected");
    assert_eq!(e.errors.len(), 1, "{e}");
    assert_eq!(e.errors[0].document, Some(1));
    assert!(e.errors[0].line >= 5, "{e}");
}

#[test]
fn tracing_settings_are_checked() {
    let e = sidecar_err(
        "proxy:\n  tracing:\n    sampling: 1.5\nsnapshot:\n  service: order\n  destinations: []\n",
    );
    assert_eq!(e.path, "proxy.tracing.sampling");
    assert_eq!(e.line, 3);
    assert!(e.reason.contains("between 0.0 and 1.0"), "{}", e.reason);
    let e = sidecar_err(
        "proxy:\n  tracing:\n    otlp_endpoint: collector:4317\nsnapshot:\n  service: order\n  destinations: []\n",
    );
    assert_eq!(e.path, "proxy.tracing.otlp_endpoint");
    assert_eq!(e.line, 3);
    let ok = from_yaml_validated::<SidecarFile>(
        "proxy:\n  tracing: { otlp_endpoint: 'http://127.0.0.1:4317', sampling: 1, b3: true }\nsnapshot:\n  service: order\n  destinations: []\n",
    )
    .expect("valid");
    assert!(ok.proxy.tracing.b3);
    assert_eq!(ok.proxy.tracing.sampling, 1.0);
}
