//! The system tests (issue 11): one `outrigger up` mesh — the control plane and the five shop
//! services with their sidecars, the most expensive thing the tests start — serves all of
//! them. They used to start five: `mesh_up` (two runs), `mesh_tracing`, `prometheus` and `top`.
//! The single run takes the union of what they asked for, reconciled:
//!
//! - `--orders-per-sec 30` (`mesh_up`'s first run and `mesh_tracing`; `mesh_up`'s second ran
//!   the default 20, and only needs 100 orders);
//! - `--canary-error-rate 0.5` (`mesh_tracing`: many retried charges; `mesh_up` ran the default
//!   0.2). A retried charge avoids the endpoint that failed it (`proxy/src/balance.rs`), and
//!   v2 has one, so the canary costs no order either way and `mesh_up`'s assertions (at least
//!   99 % of orders, and no failed order at all) only get harder;
//! - `--trace-sampling 1 --otlp-endpoint` the OTLP receiver (`mesh_tracing`);
//! - `--prometheus-targets` the directory Prometheus watches (`prometheus`);
//! - `--cert-lifetime 8s --bootstrap-token-ttl 4s` (`mesh_up`'s second run): every sidecar
//!   renews its certificate every 5.6 s under all the other steps, which must not notice;
//! - `--summary-json` (`mesh_up`).
//!
//! How the run ends cannot be shared: `mesh_up` let `--duration` (20 s, and 30 s for the short
//! certificates) run out, the other three stopped `up` with SIGTERM once their checks were done
//! and checked that it stopped cleanly. A fixed `--duration` that all the steps must finish
//! within would fail them on a loaded machine, or make every run wait for the worst case; so
//! `up` runs with the harness's `--duration 900s` as a safety net, is given at least the 30 s
//! of load of `mesh_up`'s longer run (its certificate count and canary share are calibrated on
//! that), and is then stopped with SIGTERM — which also is how a person stops it. `up`'s end at
//! its `--duration` is the one thing no system test exercises any more: it is the same code
//! path from the stop on (the summary, stopping the children, removing the targets).
//!
//! Steps run one after the other against the live mesh, each polling with its own deadline as
//! it did on its own, then the checks of the stopped run (its summary, its output, what it
//! left behind). A failed assertion names its step (see [`step`]).
//!
//! `top::top_once_fails_clearly_without_a_control_plane` and
//! `top::the_control_plane_lists_each_sidecar_s_admin_address` stay in `top`: neither starts
//! `up` (the second runs a control plane and one sidecar of its own, in 0.1 s, and needs the
//! admin token that `up` keeps to itself to show a bad admin address refused).

mod mesh_tracing;
mod mesh_up;
mod prometheus;
mod top;

use outrigger_tests::otlp::Receiver;
use outrigger_tests::up::Up;
use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// The least load the shared run gets before it is stopped: `mesh_up`'s longer run, with
/// certificates that live 8 s.
const LOAD: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_outrigger_up_mesh_for_up_prometheus_the_trace_and_top() {
    // What the steps need beside the mesh, running before it starts.
    let (mut rx, scraper) = tokio::join!(
        step("mesh_tracing: start the OTLP receiver", Receiver::start()),
        step("prometheus: start Prometheus", prometheus::Scraper::start()),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let summary_json = dir.path().join("summary.json");
    let (endpoint, targets) = (rx.endpoint(), scraper.targets());
    let args = [
        "--orders-per-sec",
        "30",
        "--canary-error-rate",
        "0.5",
        "--trace-sampling",
        "1",
        "--otlp-endpoint",
        &endpoint,
        "--prometheus-targets",
        targets.to_str().expect("utf-8 temp path"),
        "--cert-lifetime",
        "8s",
        "--bootstrap-token-ttl",
        "4s",
        "--summary-json",
        summary_json.to_str().expect("utf-8 temp path"),
    ];
    let spawned = Instant::now();
    let mut up = step("up: start the mesh", Up::start(&args)).await;
    let startup = spawned.elapsed();
    let load_started = Instant::now();

    // The live mesh.
    step(
        "mesh_tracing: an order is one trace across both sidecars of each hop",
        mesh_tracing::an_order_is_one_trace_across_both_sidecars_of_each_hop_with_every_attempt(
            &mut up, &rx,
        ),
    )
    .await;
    let top_header = step(
        "top: a running mesh as plain text and on a terminal",
        top::top_shows_a_running_mesh_as_plain_text_and_on_a_terminal(&mut up),
    )
    .await;
    step(
        "prometheus: it scrapes the mesh and every dashboard query has data",
        prometheus::prometheus_scrapes_the_mesh_and_every_dashboard_query_has_data(
            &mut up, &scraper,
        ),
    )
    .await;
    step("up: the least load the summary is judged on", async {
        while load_started.elapsed() < LOAD {
            up.assert_running();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;

    // The stop, and the stopped run.
    let stopping = Instant::now();
    let status = up.stop(Duration::from_secs(60)).await;
    let shutdown = stopping.elapsed();
    step("up: stops cleanly on SIGTERM", async {
        assert!(
            status.is_some_and(|s| s.success()),
            "outrigger up did not stop cleanly ({status:?}):\n{}",
            up.log()
        );
    })
    .await;
    let summary = step("mesh_up: the summary", async {
        mesh_up::summary(&summary_json)
    })
    .await;
    step(
        "mesh_up: up runs the shop and absorbs a flaky canary",
        async {
            mesh_up::outrigger_up_runs_the_shop_and_absorbs_a_flaky_canary(
                &up, &summary, startup, shutdown,
            )
        },
    )
    .await;
    step(
        "mesh_up: short-lived certificates and bootstrap tokens cost no order",
        async {
            mesh_up::short_lived_certificates_and_bootstrap_tokens_cost_no_order(&up, &summary)
        },
    )
    .await;
    step("mesh_tracing: after the stop", async {
        mesh_tracing::the_receiver_outlived_the_mesh_and_up_printed_its_summary(&up, &mut rx)
    })
    .await;
    step("prometheus: up takes its targets away", async {
        prometheus::up_takes_its_targets_away_when_it_stops(&scraper)
    })
    .await;
    step("top: up's summary has top's columns", async {
        top::up_s_summary_has_top_s_columns(&up, &top_header)
    })
    .await;
}

/// Runs one step; a failed assertion in it fails the test with a message that names the step
/// (and starts with the assertion's own message, which the panic hook printed in full above).
/// Each step's time is printed too (shown with a failure, or with `--nocapture`).
async fn step<T>(name: &str, f: impl Future<Output = T>) -> T {
    let started = Instant::now();
    match CatchUnwind(Box::pin(f)).await {
        Ok(v) => {
            println!("step `{name}`: {:.1?}", started.elapsed());
            v
        }
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("(a panic without a message)");
            let first = message.lines().next().unwrap_or_default();
            panic!("system test step `{name}` failed: {first}");
        }
    }
}

/// A future's panic as a value, so [`step`] can name the step that failed.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

#[tokio::test]
#[should_panic(expected = "system test step `a step` failed: what went wrong")]
async fn a_failed_step_is_named() {
    step("a step", async {
        tokio::task::yield_now().await;
        panic!("what went wrong\nand more");
    })
    .await;
}
