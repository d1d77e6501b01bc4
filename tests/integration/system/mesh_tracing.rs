//! The mesh trace step of the shared system test (`super`): an order is one trace across
//! the sidecars, with every attempt of a retried charge.

use outrigger_tests::otlp::{Receiver, Span};
use outrigger_tests::up::Up;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// The spans of each trace.
fn by_trace(spans: &[Span]) -> BTreeMap<&str, Vec<&Span>> {
    let mut traces: BTreeMap<&str, Vec<&Span>> = BTreeMap::new();
    for s in spans {
        traces.entry(s.trace_id.as_str()).or_default().push(s);
    }
    traces
}

/// CLIENT spans of `from`'s sidecar, children of `parent`, that call `dst`.
fn calls<'a>(trace: &[&'a Span], parent: &Span, from: &str, dst: &str) -> Vec<&'a Span> {
    trace
        .iter()
        .copied()
        .filter(|s| {
            s.service == from
                && s.is_client()
                && s.parent.as_deref() == Some(parent.span_id.as_str())
                && s.str_attr("peer.service") == Some(dst)
        })
        .collect()
}

/// SERVER spans of `service`'s sidecar whose parent is `client`.
fn served<'a>(trace: &[&'a Span], client: &Span, service: &str) -> Vec<&'a Span> {
    trace
        .iter()
        .copied()
        .filter(|s| {
            s.service == service
                && s.is_server()
                && s.parent.as_deref() == Some(client.span_id.as_str())
        })
        .collect()
}

/// Every hop of `clients` reached its callee's sidecar: exactly one SERVER span under each.
fn all_served(trace: &[&Span], clients: &[&Span], service: &str) -> bool {
    clients.iter().all(|c| served(trace, c, service).len() == 1)
}

/// An order handled by the order sidecar (its SERVER span) whose calls to inventory and to
/// payment are its CLIENT children, each with the callee sidecar's SERVER span under it.
struct Order<'a> {
    trace: Vec<&'a Span>,
    server: &'a Span,
    inventory: Vec<&'a Span>,
    payment: Vec<&'a Span>,
}

fn orders<'a>(spans: &'a [Span]) -> Vec<Order<'a>> {
    let mut found = Vec::new();
    for (_, trace) in by_trace(spans) {
        for server in trace.iter().copied() {
            if server.service != "order" || !server.is_server() {
                continue;
            }
            let inventory = calls(&trace, server, "order", "inventory");
            let payment = calls(&trace, server, "order", "payment");
            if !inventory.is_empty()
                && !payment.is_empty()
                && all_served(&trace, &inventory, "inventory")
                && all_served(&trace, &payment, "payment")
            {
                found.push(Order {
                    trace: trace.clone(),
                    server,
                    inventory,
                    payment,
                });
            }
        }
    }
    found
}

/// Whether the charge of this order was retried: two or more sibling attempts, 1 and 2
/// among them (every attempt's SERVER span is already checked by [`orders`]).
fn retried(o: &Order) -> bool {
    let attempts: Vec<i64> = o.payment.iter().map(|s| s.attempt()).collect();
    o.payment.len() >= 2 && attempts.contains(&1) && attempts.contains(&2)
}

/// What the receiver got, for a failure message: spans per service and kind, and how many
/// traces have an order SERVER span, and several payment attempts.
fn describe(spans: &[Span]) -> String {
    let mut kinds: BTreeMap<(String, String), usize> = BTreeMap::new();
    for s in spans {
        *kinds
            .entry((s.service.clone(), s.kind.clone()))
            .or_default() += 1;
    }
    let traces = by_trace(spans);
    let with_order = traces
        .values()
        .filter(|t| t.iter().any(|s| s.service == "order" && s.is_server()))
        .count();
    let multi_attempt = traces
        .values()
        .filter(|t| t.iter().any(|s| s.service == "order" && s.attempt() >= 2))
        .count();
    let sample = traces
        .values()
        .find(|t| t.iter().any(|s| s.service == "order" && s.is_server()))
        .map(|t| {
            t.iter()
                .map(|s| {
                    format!(
                        "  {} {} {} span {} parent {:?} attempt {} peer {:?}",
                        s.service,
                        s.kind,
                        s.name,
                        s.span_id,
                        s.parent,
                        s.attempt(),
                        s.str_attr("peer.service")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    format!(
        "{} spans, {} traces; by service and kind {kinds:?}; {with_order} traces with an order \
         SERVER span, {multi_attempt} with a retried call from order; one of them:\n{sample}",
        spans.len(),
        traces.len()
    )
}

/// A real trace across the mesh (issue 6, point 3): a real OTLP/gRPC receiver built from the
/// official OpenTelemetry protobuf definitions (`tests/otlp/receiver.py`) collects the spans
/// of every sidecar of `outrigger up --otlp-endpoint`, while storefront load places orders
/// and the payment v2 canary fails half its charges. Among the spans there must be an order
/// whose one trace holds the order sidecar's SERVER span, its CLIENT spans to inventory and
/// payment as children, and under each of those the SERVER span of the callee's sidecar; and
/// an order whose charge was retried, with one sibling CLIENT span per attempt, each with
/// payment's SERVER span under it. Orders the test places itself, each with a traceparent of
/// its own, must join that trace: the edge sidecar's span is a child of the span it named.
/// The shop links the hops by forwarding the traceparent it received (services/src/trace.rs);
/// the sidecars make every span.
///
/// `up` runs with `--orders-per-sec 30 --canary-error-rate 0.5 --trace-sampling 1
/// --otlp-endpoint` [`Receiver::endpoint`]: 30 orders/s, ~10 % of charges on the canary, half
/// of which fail at first and are retried by the `charge` route (gateway-error, 3 attempts):
/// dozens of retries a minute. `up`'s stop and summary are checked by
/// [`the_receiver_outlived_the_mesh_and_up_printed_its_summary`].
pub(super) async fn an_order_is_one_trace_across_both_sidecars_of_each_hop_with_every_attempt(
    up: &mut Up,
    rx: &Receiver,
) {
    // Orders of our own, as an instrumented storefront would send them: each carries a
    // traceparent naming a span of ours, which the mesh must join rather than replace.
    let client = outrigger_tests::client::h1();
    let mut ours: BTreeMap<String, String> = BTreeMap::new();
    for _ in 0..20 {
        let trace_id = format!("{:032x}", fastrand::u128(1..));
        let span_id = format!("{:016x}", fastrand::u64(1..));
        let req = outrigger_tests::client::request("POST", &format!("http://{}/orders", up.edge))
            .header("host", "order")
            .header("content-type", "application/json")
            .header("traceparent", format!("00-{trace_id}-{span_id}-01"))
            .body(outrigger_tests::client::full(
                r#"{"user": "tracer", "product_id": "p1", "quantity": 1}"#,
            ))
            .expect("order request");
        let res = outrigger_tests::client::send(&client, req).await;
        assert!(res.status().is_success(), "our order: {res:?}");
        ours.insert(trace_id, span_id);
    }

    // The sidecars export in the background: poll until the traces are complete.
    let deadline = Instant::now() + Duration::from_secs(120);
    let spans = loop {
        up.assert_running();
        let spans = rx.spans();
        let found = orders(&spans);
        let joined = found
            .iter()
            .filter(|o| ours.contains_key(o.server.trace_id.as_str()))
            .count();
        if found.iter().any(|o| !retried(o)) && found.iter().any(retried) && joined > 0 {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "no complete order trace, retried order trace and order of ours among the \
             exported spans ({joined} of ours): {}\n(logs in {})",
            describe(&spans),
            up.logs().display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let found = orders(&spans);

    // One order, end to end: storefront's edge sidecar → order's sidecar (SERVER) → order's
    // sidecar calling inventory and payment (CLIENT) → their sidecars (SERVER), one trace id.
    let o = found
        .iter()
        .find(|o| !retried(o))
        .expect("an order that was not retried");
    let edge = o
        .trace
        .iter()
        .find(|s| Some(s.span_id.as_str()) == o.server.parent.as_deref())
        .unwrap_or_else(|| {
            panic!(
                "the order SERVER span's parent was not exported: {o:?}",
                o = o.server
            )
        });
    assert_eq!(
        (edge.service.as_str(), edge.kind.as_str()),
        ("storefront", "SPAN_KIND_CLIENT"),
        "{edge:?}"
    );
    assert_eq!(edge.str_attr("peer.service"), Some("order"), "{edge:?}");
    for (clients, service, route) in [
        (&o.inventory, "inventory", "reserve"),
        (&o.payment, "payment", "charge"),
    ] {
        for c in clients {
            assert_eq!(c.trace_id, o.server.trace_id);
            assert_eq!(c.str_attr("http.route"), Some(route), "{c:?}");
            assert_eq!(c.str_attr("outrigger.direction"), Some("outbound"), "{c:?}");
            let s = served(&o.trace, c, service)[0];
            assert_eq!(s.str_attr("outrigger.direction"), Some("inbound"), "{s:?}");
            // mTLS is strict under `up`: the callee knows its caller's identity.
            assert_eq!(s.str_attr("peer.service"), Some("order"), "{s:?}");
            assert_eq!(
                s.int_attr("http.response.status_code"),
                c.int_attr("http.response.status_code"),
                "the two sidecars of one hop saw different answers: {c:?} {s:?}"
            );
        }
    }

    // A retried charge: one CLIENT span per attempt, siblings under the order SERVER span,
    // the failed attempt marked with its status, and payment's SERVER span under each.
    let r = found.iter().find(|o| retried(o)).expect("a retried order");
    let mut attempts: Vec<&Span> = r.payment.clone();
    attempts.sort_by_key(|s| s.attempt());
    let ids: std::collections::BTreeSet<&str> =
        attempts.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(ids.len(), attempts.len(), "each attempt is its own span");
    let first = attempts[0];
    assert_eq!(first.attempt(), 1);
    assert_eq!(first.str_attr("error.type"), Some("503"), "{first:?}");
    assert_eq!(first.status, "STATUS_CODE_ERROR", "{first:?}");
    let first_served = served(&r.trace, first, "payment")[0];
    assert_eq!(
        first_served.int_attr("http.response.status_code"),
        Some(503),
        "{first_served:?}"
    );
    for a in &attempts[1..] {
        assert_eq!(a.parent, first.parent, "attempts are siblings");
        assert_eq!(
            a.int_attr("http.request.resend_count"),
            Some(a.attempt() - 1),
            "{a:?}"
        );
    }

    // Our own orders joined the trace they came with: the edge sidecar's span is a child of
    // the span we named, in our trace, and the whole order hangs below it.
    let mine = found
        .iter()
        .find(|o| ours.contains_key(o.server.trace_id.as_str()))
        .expect("an order of ours");
    let edge = mine
        .trace
        .iter()
        .find(|s| Some(s.span_id.as_str()) == mine.server.parent.as_deref())
        .expect("the edge span of our order");
    assert_eq!(
        edge.parent.as_deref(),
        ours.get(edge.trace_id.as_str()).map(String::as_str),
        "the edge's span must be a child of the span our traceparent named: {edge:?}"
    );
    assert_eq!(edge.service, "storefront", "{edge:?}");
}

/// The end of the trace step, once `up` has stopped (cleanly: [`super`] checks its exit
/// status): the receiver is still running, and `up` printed its summary.
pub(super) fn the_receiver_outlived_the_mesh_and_up_printed_its_summary(
    up: &Up,
    rx: &mut Receiver,
) {
    assert!(rx.is_running(), "the receiver died");
    assert!(
        up.output().iter().any(|l| l.starts_with("summary after")),
        "{}",
        up.log()
    );
}
