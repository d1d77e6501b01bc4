//! Policy compositions, in process under paused time: the real request path
//! ([`super::handle_with`]) over a compiled snapshot, a real hyper client talking to it
//! through an in-memory pipe, and a scripted upstream in place of the network
//! ([`Scripted`], behind the [`SendUpstream`] seam). Each scripted response also crosses a
//! real hyper connection in memory, so bodies, trailers and the replayed request body are the
//! real ones. No sockets and no real time: a test that waits seconds of route timeouts and
//! backoffs runs in milliseconds, and its timings are exact.
//!
//! The few end-to-end checks of the same policies against the real binary and real sockets
//! stay in `tests/integration/resilience_*.rs`.

use super::handle_with;
use super::test_support::sidecar;
use super::upstream::{SendError, SendUpstream};
use crate::body::RequestBody;
use crate::peer::Peer;
use crate::routing::{Dest, EndpointTarget};
use crate::sidecar::Sidecar;
use crate::Direction;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// What an endpoint does with one request.
#[derive(Debug, Clone, Copy)]
enum Act {
    /// Answers with this status after this long (the response head waits; the body follows).
    Respond(u16, Duration),
    /// The connection cannot be made.
    Refuse,
    /// Never answers.
    Hang,
}

/// One request as an endpoint saw it.
#[derive(Debug, Clone)]
struct Seen {
    endpoint: SocketAddr,
    at: Instant,
    attempt: Option<String>,
    body: Bytes,
}

type Plan = dyn Fn(SocketAddr, usize) -> Act + Send + Sync;

/// The upstream, scripted: `plan(endpoint, n)` says what the endpoint does with the `n`th
/// request it gets (from 0).
struct Scripted {
    plan: Box<Plan>,
    seen: Mutex<Vec<Seen>>,
}

impl Scripted {
    fn new(plan: impl Fn(SocketAddr, usize) -> Act + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            plan: Box::new(plan),
            seen: Mutex::new(Vec::new()),
        })
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn count(&self, endpoint: SocketAddr) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.endpoint == endpoint)
            .count()
    }
}

impl SendUpstream for Arc<Scripted> {
    async fn send(
        &self,
        _dest: &Dest,
        ep: &EndpointTarget,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let n = {
            let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            seen.iter().filter(|s| s.endpoint == ep.addr).count()
        };
        let act = (self.plan)(ep.addr, n);
        let attempt = req
            .headers()
            .get(super::ATTEMPT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Act::Refuse = act {
            self.seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Seen {
                    endpoint: ep.addr,
                    at: Instant::now(),
                    attempt,
                    body: Bytes::new(),
                });
            return Err(SendError {
                failure: crate::retry::policy::Failure::ConnectFailure,
                cause: "scripted: connection refused".into(),
            });
        }
        // The endpoint reads the whole body first, as most apps do.
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return Err(SendError {
                    failure: crate::retry::policy::Failure::Reset,
                    cause: e,
                })
            }
        };
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Seen {
                endpoint: ep.addr,
                at: Instant::now(),
                attempt,
                body: body.clone(),
            });
        let (status, after) = match act {
            Act::Respond(status, after) => (status, after),
            Act::Hang => (200, Duration::from_secs(86_400)),
            Act::Refuse => unreachable!("handled above"),
        };
        let name = ep.addr.to_string();
        // A real HTTP/1 exchange in memory, so the response body is hyper's own.
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let svc = service_fn(move |_req: Request<Incoming>| {
                let name = name.clone();
                async move {
                    tokio::time::sleep(after).await;
                    let mut res = Response::new(Full::new(Bytes::from(name)));
                    *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                    Ok::<_, Infallible>(res)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server_io), svc)
                .await;
        });
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
            .await
            .map_err(|e| SendError {
                failure: crate::retry::policy::Failure::ConnectFailure,
                cause: e.into(),
            })?;
        tokio::spawn(conn);
        let mut up = Request::new(Full::new(Bytes::new()));
        *up.method_mut() = parts.method;
        *up.uri_mut() = parts.uri;
        tx.send_request(up).await.map_err(|e| SendError {
            failure: crate::retry::policy::Failure::Reset,
            cause: e.into(),
        })
    }
}

/// The app's side: sends requests to the sidecar's outbound path through a pipe.
struct App {
    sidecar: Arc<Sidecar>,
    upstream: Arc<Scripted>,
}

impl App {
    fn new(snapshot: &str, upstream: &Arc<Scripted>) -> Self {
        Self {
            sidecar: sidecar(snapshot),
            upstream: upstream.clone(),
        }
    }

    /// One request on its own connection; the response with its whole body.
    async fn send(&self, req: Request<Full<Bytes>>) -> Response<Bytes> {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let sidecar = self.sidecar.clone();
        let upstream = self.upstream.clone();
        tokio::spawn(async move {
            let peer = Arc::new(Peer::plaintext("127.0.0.1:40000".parse().expect("addr")));
            let svc = service_fn(move |req| {
                let (sidecar, upstream, peer) = (sidecar.clone(), upstream.clone(), peer.clone());
                async move {
                    Ok::<_, Infallible>(
                        handle_with(&sidecar, Direction::Outbound, &peer, req, &upstream).await,
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server_io), svc)
                .await;
        });
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let res = tx.send_request(req).await.expect("response head");
        let (parts, body) = res.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Response::from_parts(parts, body)
    }

    async fn get(&self, host: &str, path: &str) -> Response<Bytes> {
        self.send(
            Request::get(path)
                .header("host", host)
                .body(Full::new(Bytes::new()))
                .expect("req"),
        )
        .await
    }

    /// A counter of the sidecar's registry, by name and label values (in any order).
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.sidecar
            .telemetry
            .metrics
            .registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| {
                labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                })
            })
            .map(|m| m.get_counter().get_value())
            .sum()
    }
}

fn reason(res: &Response<Bytes>) -> Option<&str> {
    res.headers()
        .get(crate::error::ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
}

const A: &str = "10.0.0.1:80";
const B: &str = "10.0.0.2:80";
const C: &str = "10.0.0.3:80";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

/// A snapshot with one destination, `payment`, over `endpoints`, taking turns (round robin)
/// so every count is exact; `extra` is more destination keys, one per line.
fn mesh(endpoints: &[&str], extra: &str) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|a| format!("{{address: \"{a}\"}}"))
        .collect();
    let mut s = format!(
        "service: order\ndestinations:\n  - name: payment\n    load_balancer: round-robin\n    endpoints: [{}]\n",
        eps.join(", ")
    );
    if !extra.contains("outlier_detection") {
        s += "    outlier_detection: {consecutive_failures: 0}\n";
    }
    for line in extra.lines() {
        s += &format!("    {line}\n");
    }
    s
}

#[tokio::test(start_paused = true)]
async fn the_route_timeout_bounds_the_whole_request_retries_and_backoff_included() {
    // Every attempt is cut at 300 ms; the route gives up at 1 s whatever the attempts left.
    let up = Scripted::new(|_, _| Act::Hang);
    let app = App::new(
        &mesh(
            &[A, B],
            "routes:\n  - {name: all, timeout: 1s, per_try_timeout: 300ms, \
             retries: {attempts: 10, on: [gateway-error], backoff: {base: 10ms, max: 10ms}}}",
        ),
        &up,
    );
    let start = Instant::now();
    let res = app.get("payment", "/").await;
    let took = start.elapsed();
    assert_eq!(res.status(), 504);
    assert_eq!(reason(&res), Some("timeout"));
    assert!(
        (Duration::from_secs(1)..Duration::from_millis(1010)).contains(&took),
        "{took:?}"
    );
    // 300 ms per try plus 5–10 ms of backoff: three tries fit in the second, and a fourth is
    // still under way (its per-try timeout would end past the deadline) when it passes.
    let seen = up.seen();
    assert_eq!(seen.len(), 4, "{seen:?}");
    let attempts: Vec<_> = seen.iter().filter_map(|s| s.attempt.clone()).collect();
    assert_eq!(attempts, ["1", "2", "3", "4"]);
    assert_eq!(
        app.counter("outrigger_per_try_timeouts_total", &[("route", "all")]),
        3.0
    );
}

#[tokio::test(start_paused = true)]
async fn the_last_attempt_has_the_rest_of_the_route_s_time() {
    // Both tries are slow (400 ms) against a 300 ms per-try timeout: the first is cut, the
    // last is not, and its response arrives.
    let up = Scripted::new(|_, _| Act::Respond(200, Duration::from_millis(400)));
    let app = App::new(
        &mesh(
            &[A, B],
            "routes:\n  - {name: all, timeout: 2s, per_try_timeout: 300ms, \
             retries: {attempts: 2, on: [gateway-error], backoff: {base: 10ms, max: 10ms}}}",
        ),
        &up,
    );
    let start = Instant::now();
    let res = app.get("payment", "/").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.body(), B, "the second endpoint answered");
    let took = start.elapsed();
    assert!(
        (Duration::from_millis(705)..Duration::from_millis(715)).contains(&took),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn gateway_errors_go_to_another_endpoint_and_a_post_only_when_allowed() {
    // A always fails with 502; B and C answer.
    let up = Scripted::new(|ep, _| {
        if ep == addr(A) {
            Act::Respond(502, Duration::ZERO)
        } else {
            Act::Respond(200, Duration::ZERO)
        }
    });
    let routes = "routes:\n  - {name: safe, match: {path_prefix: /safe}, \
                  retries: {attempts: 3, on: [gateway-error], non_idempotent: true}}\n  \
                  - {name: all, retries: {attempts: 3, on: [gateway-error]}}";
    let app = App::new(&mesh(&[A, B, C], routes), &up);
    for _ in 0..6 {
        let res = app.get("payment", "/").await;
        assert_eq!(res.status(), 200);
        assert_ne!(res.body(), A);
    }
    // Every time A was picked its 502 was retried, on another endpoint.
    let a = up.count(addr(A));
    assert!(a >= 2, "A was picked {a} times");
    assert_eq!(
        app.counter("outrigger_retries_total", &[("outcome", "retried")]),
        a as f64
    );
    assert_eq!(up.seen().len(), 6 + a);

    // POST: not retried on a 502 unless the route opts in.
    let post = |path: &str| {
        Request::post(path)
            .header("host", "payment")
            .body(Full::new(Bytes::from_static(b"order=42")))
            .expect("req")
    };
    let mut failed = 0;
    for _ in 0..3 {
        if app.send(post("/")).await.status() == 502 {
            failed += 1;
        }
    }
    assert_eq!(failed, 1, "the POST that met A got A's 502");
    assert_eq!(
        app.counter("outrigger_retries_total", &[("outcome", "not_retryable")]),
        1.0
    );
    for _ in 0..3 {
        assert_eq!(app.send(post("/safe")).await.status(), 200);
    }
    // Every POST that reached an app carried the whole body.
    assert!(up
        .seen()
        .iter()
        .filter(|s| !s.body.is_empty())
        .all(|s| s.body == "order=42"));
}

#[tokio::test(start_paused = true)]
async fn a_retried_post_body_arrives_whole_on_every_attempt_up_to_the_cap() {
    let up = Scripted::new(|ep, _| {
        if ep == addr(A) {
            Act::Refuse
        } else {
            Act::Respond(200, Duration::ZERO)
        }
    });
    let app = App::new(
        &mesh(
            &[A, B],
            "routes:\n  - {name: all, retries: {attempts: 2, on: [connect-failure], buffer_bytes: 4096}}",
        ),
        &up,
    );
    let body: Bytes = (0..4000u32).map(|i| (i % 251) as u8).collect();
    let res = app
        .send(
            Request::post("/")
                .header("host", "payment")
                .body(Full::new(body.clone()))
                .expect("req"),
        )
        .await;
    assert_eq!(res.status(), 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body, body, "the retry sent the body byte for byte");
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_caps_the_extra_load_on_a_failing_destination() {
    // Every endpoint refuses. Budget: 10 % of requests plus a reserve of 2 over the window.
    let up = Scripted::new(|_, _| Act::Refuse);
    let app = App::new(
        &mesh(
            &[A, B],
            "retry_budget: {ratio: 0.1, min_per_second: 1, window: 2s}\n\
             routes:\n  - {name: all, retries: {attempts: 3, on: [connect-failure]}}",
        ),
        &up,
    );
    for _ in 0..100 {
        let res = app.get("payment", "/").await;
        assert_eq!(reason(&res), Some("connect-failure"));
    }
    let retries = up.seen().len() - 100;
    // 2 in reserve plus 10 % of 100 earned: 12 retries, not the 200 three attempts allow.
    assert_eq!(retries, 12, "retries sent");
    // The reserve let the first request retry twice; from then on each request earned a
    // tenth of a retry, so each of the other 99 ran into the budget.
    assert_eq!(
        app.counter("outrigger_retries_total", &[("outcome", "retried")]),
        12.0
    );
    assert_eq!(
        app.counter(
            "outrigger_retries_total",
            &[("outcome", "budget_exhausted")]
        ),
        99.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_endpoint_is_ejected_probed_after_its_time_and_restored() {
    // A fails (502) until it has seen 6 requests, then recovers.
    let up = Scripted::new(|ep, n| {
        if ep == addr(A) && n < 6 {
            Act::Respond(502, Duration::ZERO)
        } else {
            Act::Respond(200, Duration::ZERO)
        }
    });
    let app = App::new(
        &mesh(
            &[A, B],
            "outlier_detection: {consecutive_failures: 3, base_ejection: 10s, max_ejected_percent: 50}\n\
             routes:\n  - {name: all, retries: {attempts: 2, on: [gateway-error]}}",
        ),
        &up,
    );
    // Round robin: A gets every other first attempt, and its 502s are retried on B.
    for _ in 0..6 {
        assert_eq!(app.get("payment", "/").await.status(), 200);
    }
    assert_eq!(up.count(addr(A)), 3, "ejected after its third failure");
    for _ in 0..20 {
        assert_eq!(app.get("payment", "/").await.body(), B);
    }
    assert_eq!(up.count(addr(A)), 3, "no traffic while ejected");
    // A request every 500 ms. Each failed probe keeps A out for base × ejections so far
    // (20 s, 30 s, 40 s); the fourth probe, which A answers, brings it back.
    let end = Instant::now() + Duration::from_secs(200);
    while up.count(addr(A)) < 9 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(app.get("payment", "/").await.status(), 200);
    }
    let at: Vec<Instant> = up
        .seen()
        .iter()
        .filter(|s| s.endpoint == addr(A))
        .map(|s| s.at)
        .collect();
    assert!(
        at.len() >= 9,
        "A came back into rotation: {} requests",
        at.len()
    );
    for (i, want) in [10u64, 20, 30, 40].into_iter().enumerate() {
        let gap = at[3 + i] - at[2 + i];
        assert!(
            (Duration::from_secs(want)..Duration::from_secs(want) + Duration::from_millis(600))
                .contains(&gap),
            "probe {} came {gap:?} after the previous, not {want} s",
            i + 1
        );
    }
    // Back in rotation: A now gets its turns again.
    assert!(at[8] - at[7] < Duration::from_secs(2));
    assert_eq!(
        app.counter("outrigger_ejections_total", &[]),
        1.0,
        "a failed probe extends the ejection; it is not a new one"
    );
}

#[tokio::test(start_paused = true)]
async fn the_in_flight_limit_queues_up_to_its_pending_bound_and_fails_the_rest_fast() {
    // Slow answers (1 s); one request in flight, one waiting.
    let up = Scripted::new(|_, _| Act::Respond(200, Duration::from_secs(1)));
    let app = Arc::new(App::new(
        &mesh(
            &[A],
            "limits: {max_requests: 1, max_pending_requests: 1}\n\
             routes:\n  - {name: all, timeout: 5s}",
        ),
        &up,
    ));
    let start = Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                let res = app.get("payment", "/").await;
                (
                    res.status(),
                    reason(&res).map(str::to_owned),
                    start.elapsed(),
                )
            })
        })
        .collect();
    let mut out = Vec::new();
    for c in calls {
        out.push(c.await.expect("task"));
    }
    out.sort_by_key(|o| o.2);
    assert_eq!(out[0].0, 503, "the third is refused at once: {out:?}");
    assert_eq!(out[0].1.as_deref(), Some("overloaded"));
    assert!(out[0].2 < Duration::from_millis(10), "{out:?}");
    assert_eq!((out[1].0, out[2].0), (StatusCode::OK, StatusCode::OK));
    assert_eq!(out[1].2, Duration::from_secs(1));
    assert_eq!(out[2].2, Duration::from_secs(2), "the queued one ran after");
    assert_eq!(
        app.counter(
            "outrigger_overload_rejections_total",
            &[("limit", "pending")]
        ),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_canary_split_is_sticky_per_user_and_a_failing_canary_s_retries_land_on_stable() {
    let v2: &str = C;
    let up = Scripted::new(move |ep, _| {
        if ep == addr(v2) {
            Act::Respond(503, Duration::ZERO)
        } else {
            Act::Respond(200, Duration::ZERO)
        }
    });
    let snapshot = format!(
        "service: order\ndestinations:\n  - name: payment\n    \
         outlier_detection: {{consecutive_failures: 0}}\n    \
         endpoints: [{{address: \"{A}\", version: v1}}, {{address: \"{B}\", version: v1}}, \
         {{address: \"{C}\", version: v2}}]\n    \
         sticky_header: x-user\n    split: [{{version: v1, weight: 80}}, {{version: v2, weight: 20}}]\n    \
         routes:\n      - {{name: all, retries: {{attempts: 2, on: [\"5xx\"]}}}}\n"
    );
    let app = App::new(&snapshot, &up);
    let user = |id: usize| {
        Request::get("/")
            .header("host", "payment")
            .header("x-user", format!("user-{id}"))
            .body(Full::new(Bytes::new()))
            .expect("req")
    };
    // Each user's first attempts all go to one version.
    for id in 0..50 {
        let before = up.count(addr(v2));
        for _ in 0..4 {
            assert_eq!(app.send(user(id)).await.status(), 200, "retries absorb v2");
        }
        let canary = up.count(addr(v2)) - before;
        assert!(
            canary == 0 || canary == 4,
            "user {id} saw v2 {canary} times of 4"
        );
    }
    let canary_users = up.count(addr(v2)) / 4;
    assert!(
        (3..=20).contains(&canary_users),
        "{canary_users} of 50 on v2"
    );
}
