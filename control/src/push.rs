//! Config push: one NDJSON stream per sidecar that sends its service's snapshot at once and
//! again whenever its content changes, keepalives in between; and the sidecars' ACKs and
//! NACKs, kept as each sidecar's sync status.

mod lines;

use crate::metrics::Metrics;
use crate::state::Handle;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
pub use lines::Lines;
use outrigger_config::{Mtls, Snapshot};
use serde::Serialize;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};

pub const KEEPALIVE: Duration = Duration::from_secs(10);
/// NACK reasons are shown to operators, not stored without bound.
const MAX_REASON: usize = 2048;
/// Sidecars gone this long are forgotten, so restarts under new ids do not pile up.
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// How often connects sweep for forgotten sidecars.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Pushed versions remembered per sidecar, to tell which trust bundle an ACK acknowledges.
const PUSHED_KEPT: usize = 8;

/// One line of a push stream.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Line<'a> {
    Snapshot {
        version: u64,
        snapshot: &'a Snapshot,
    },
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Nack {
    pub version: u64,
    pub reason: String,
}

/// Who opened a push stream, as its query says.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub id: String,
    pub service: String,
    /// The instance's version label (`v1`, `v2`), when the sidecar says.
    pub version: Option<String>,
    /// The sidecar's admin listener, so operators' tools (`outrigger top`) can find its
    /// `/metrics` and `/stats` without being told every address.
    pub admin: Option<SocketAddr>,
}

/// A sidecar's sync status, as `GET /v1/sidecars` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct SidecarStatus {
    pub id: String,
    pub service: String,
    pub version: Option<String>,
    pub admin: Option<SocketAddr>,
    /// A push stream is open.
    pub connected: bool,
    pub acked_version: Option<u64>,
    /// The last snapshot version sent on its stream: in sync when it equals `acked_version`.
    pub pushed_version: Option<u64>,
    pub last_nack: Option<Nack>,
    /// RFC 3339.
    pub last_seen: String,
}

#[derive(Debug)]
struct Sidecar {
    service: String,
    version: Option<String>,
    admin: Option<SocketAddr>,
    streams: usize,
    acked_version: Option<u64>,
    pushed_version: Option<u64>,
    last_nack: Option<Nack>,
    last_seen: SystemTime,
    /// The mTLS part of the last few snapshots pushed, by version.
    pushed_mtls: Vec<(u64, Arc<Mtls>)>,
    /// The mTLS part of the newest snapshot it acknowledged: the roots it trusts.
    acked_mtls: Option<Arc<Mtls>>,
}

/// Whether a sidecar trusts a root, for rotation.
#[derive(Debug, Clone, Serialize)]
pub struct Trust {
    pub id: String,
    pub service: String,
    pub connected: bool,
    pub acked_version: Option<u64>,
    /// Its acknowledged bundle holds the root.
    pub trusts_pending: bool,
}

/// The sidecars seen, with what connect and disconnect would otherwise recount on every call.
#[derive(Default)]
struct Seen {
    by_id: BTreeMap<String, Sidecar>,
    /// Sidecars with a stream open, kept as streams open and close: counting the map on
    /// each of them made a reconnect storm of N sidecars cost N² under this lock.
    connected: usize,
    /// The last sweep for sidecars gone past `FORGET_AFTER`.
    swept: Option<SystemTime>,
}

/// Every sidecar that has opened a stream since the process started.
pub struct Sidecars {
    // Held only for map updates, never across an await.
    inner: Mutex<Seen>,
    metrics: Metrics,
    /// Wakes whoever waits for sidecars to connect, go or acknowledge (root rotation).
    pub changed: tokio::sync::Notify,
}

impl Sidecars {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            inner: Mutex::new(Seen::default()),
            metrics,
            changed: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Seen> {
        // The map stays consistent even if a holder panicked: every update is one statement.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn connect(&self, who: &Subscriber) {
        let mut seen = self.lock();
        let now = SystemTime::now();
        // Forgetting is housekeeping: a sweep a minute keeps connects O(log N).
        if seen
            .swept
            .is_none_or(|t| now.duration_since(t).map_or(true, |d| d >= SWEEP_EVERY))
        {
            seen.swept = Some(now);
            seen.by_id.retain(|_, s| {
                s.streams > 0
                    || now
                        .duration_since(s.last_seen)
                        .map_or(true, |gone| gone < FORGET_AFTER)
            });
        }
        let s = seen.by_id.entry(who.id.clone()).or_insert_with(|| Sidecar {
            service: who.service.clone(),
            version: None,
            admin: None,
            streams: 0,
            acked_version: None,
            pushed_version: None,
            last_nack: None,
            last_seen: now,
            pushed_mtls: Vec::new(),
            acked_mtls: None,
        });
        // The newest stream speaks for the sidecar: a restart may move its admin port.
        s.service = who.service.clone();
        s.version = who.version.clone();
        s.admin = who.admin;
        s.streams += 1;
        s.last_seen = now;
        let first_stream = s.streams == 1;
        if first_stream {
            seen.connected += 1;
        }
        self.set_connected(seen.connected);
        drop(seen);
        self.changed.notify_waiters();
    }

    /// The service of the sidecar with this id, if it was ever seen: a sidecar id belongs to
    /// one service, so no workload can speak for another's sidecar.
    pub fn owner(&self, id: &str) -> Option<String> {
        self.lock().by_id.get(id).map(|s| s.service.clone())
    }

    fn disconnect(&self, id: &str) {
        let mut guard = self.lock();
        let seen = &mut *guard;
        if let Some(s) = seen.by_id.get_mut(id) {
            if s.streams == 1 {
                seen.connected = seen.connected.saturating_sub(1);
            }
            s.streams = s.streams.saturating_sub(1);
            s.last_seen = SystemTime::now();
        }
        self.set_connected(seen.connected);
        drop(guard);
        self.changed.notify_waiters();
    }

    fn pushed(&self, id: &str, version: u64, mtls: Arc<Mtls>) {
        if let Some(s) = self.lock().by_id.get_mut(id) {
            s.pushed_version = Some(version);
            if s.pushed_mtls.len() >= PUSHED_KEPT {
                s.pushed_mtls.remove(0);
            }
            s.pushed_mtls.push((version, mtls));
        }
    }

    /// Every sidecar that has a stream open, and whether the bundle it last acknowledged
    /// holds the root certificate `root_pem`.
    pub fn trust(&self, root_pem: &str) -> Vec<Trust> {
        self.lock()
            .by_id
            .iter()
            .map(|(id, s)| Trust {
                id: id.clone(),
                service: s.service.clone(),
                connected: s.streams > 0,
                acked_version: s.acked_version,
                trusts_pending: s
                    .acked_mtls
                    .as_ref()
                    .is_some_and(|m| m.trust_bundle.iter().any(|r| r == root_pem)),
            })
            .collect()
    }

    fn set_connected(&self, n: usize) {
        self.metrics
            .sidecars_connected
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Records an ACK (`error` is `None`) or a NACK; false for a sidecar never seen.
    pub fn ack(&self, id: &str, version: u64, error: Option<String>) -> bool {
        let mut seen = self.lock();
        let Some(s) = seen.by_id.get_mut(id) else {
            return false;
        };
        s.last_seen = SystemTime::now();
        match error {
            None => {
                if s.acked_version.is_none_or(|v| version >= v) {
                    if let Some((_, m)) = s.pushed_mtls.iter().find(|(v, _)| *v == version) {
                        s.acked_mtls = Some(m.clone());
                    }
                }
                s.acked_version = Some(s.acked_version.map_or(version, |v| v.max(version)));
                self.metrics.acks.inc();
            }
            Some(mut reason) => {
                if reason.len() > MAX_REASON {
                    let mut cut = MAX_REASON;
                    while !reason.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    reason.truncate(cut);
                }
                s.last_nack = Some(Nack { version, reason });
                self.metrics.nacks.inc();
            }
        }
        drop(seen);
        self.changed.notify_waiters();
        true
    }

    pub fn list(&self) -> Vec<SidecarStatus> {
        self.lock()
            .by_id
            .iter()
            .map(|(id, s)| SidecarStatus {
                id: id.clone(),
                service: s.service.clone(),
                version: s.version.clone(),
                admin: s.admin,
                connected: s.streams > 0,
                acked_version: s.acked_version,
                pushed_version: s.pushed_version,
                last_nack: s.last_nack.clone(),
                last_seen: humantime::format_rfc3339_millis(s.last_seen).to_string(),
            })
            .collect()
    }
}

/// Marks the sidecar disconnected when its stream task ends, however it ends.
struct Connected {
    sidecars: Arc<Sidecars>,
    id: String,
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.sidecars.disconnect(&self.id);
    }
}

/// What a push stream needs.
pub struct StreamContext {
    pub state: Handle,
    pub sidecars: Arc<Sidecars>,
    pub metrics: Metrics,
    pub keepalive: Duration,
    /// Every service's snapshot line, compiled once per revision for all its streams.
    pub lines: Arc<Lines>,
    /// Turns true when the process shuts down; streams then end so connections can close.
    pub shutdown: watch::Receiver<bool>,
}

/// Opens a push stream for a sidecar: the returned body never ends on its own; it ends when
/// the client goes away or the process shuts down.
pub fn open(ctx: StreamContext, who: Subscriber) -> NdjsonBody {
    // One line in flight: a slow reader makes the task wait, and what it sends next is the
    // latest state, so changes coalesce instead of queueing.
    let (tx, rx) = mpsc::channel(1);
    ctx.sidecars.connect(&who);
    let connected = Connected {
        sidecars: ctx.sidecars.clone(),
        id: who.id,
    };
    tokio::spawn(run(ctx, who.service, tx, connected));
    NdjsonBody { rx }
}

async fn run(
    mut ctx: StreamContext,
    service: String,
    tx: mpsc::Sender<Bytes>,
    connected: Connected,
) {
    let mut views = ctx.state.subscribe();
    let mut last_content: Option<u64> = None;
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + ctx.keepalive, ctx.keepalive);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let view = views.borrow_and_update().clone();
        match ctx.lines.get(&service, &view) {
            Ok(compiled) if last_content != Some(compiled.content) => {
                if tx.send(compiled.line.clone()).await.is_err() {
                    return;
                }
                ctx.metrics.snapshots_pushed.inc();
                ctx.sidecars
                    .pushed(&connected.id, compiled.version, compiled.mtls.clone());
                last_content = Some(compiled.content);
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot push a snapshot"),
        }
        tokio::select! {
            changed = views.changed() => if changed.is_err() { return },
            _ = keepalive.tick() => if tx.send(keepalive_line()).await.is_err() { return },
            _ = tx.closed() => return,
            // The guard `wait_for` returns must not live across the other branches' awaits.
            _ = async { drop(ctx.shutdown.wait_for(|stop| *stop).await) } => return,
        }
    }
}

fn keepalive_line() -> Bytes {
    Bytes::from_static(b"{\"type\":\"keepalive\"}\n")
}

/// The response body of a push stream: lines as the stream task sends them.
pub struct NdjsonBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for NdjsonBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_and_nacks_are_kept_per_sidecar() -> Result<(), prometheus::Error> {
        let metrics = Metrics::new()?;
        let s = Sidecars::new(metrics.clone());
        assert!(!s.ack("a", 1, None), "unknown sidecars are not recorded");
        s.connect(&Subscriber {
            id: "a".into(),
            service: "order".into(),
            version: Some("v2".into()),
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 15000))),
        });
        assert_eq!(metrics.sidecars_connected.get(), 1);
        let mtls = Arc::new(Mtls {
            trust_bundle: vec!["root-a".into()],
            ..Mtls::default()
        });
        s.pushed("a", 3, mtls.clone());
        s.pushed("a", 4, Arc::new(Mtls::default()));
        assert!(s.ack("a", 3, None));
        assert!(s.ack("a", 2, None), "a late ACK of an older version");
        assert!(s.ack("a", 4, Some("x".repeat(10_000))));
        let list = s.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].acked_version, Some(3));
        assert_eq!(list[0].pushed_version, Some(4));
        assert_eq!(list[0].version.as_deref(), Some("v2"));
        let json = serde_json::to_value(&list[0]).unwrap_or_default();
        assert_eq!(json["admin"], "127.0.0.1:15000");
        let nack = list[0]
            .last_nack
            .as_ref()
            .map(|n| (n.version, n.reason.len()));
        assert_eq!(nack, Some((4, MAX_REASON)));
        assert!(list[0].connected);
        let trust = s.trust("root-a");
        assert!(
            trust[0].trusts_pending,
            "version 3 carried root-a and was acknowledged"
        );
        assert!(!s.trust("root-b")[0].trusts_pending);
        assert_eq!(s.owner("a").as_deref(), Some("order"));
        assert_eq!(s.owner("b"), None);
        s.disconnect("a");
        assert!(!s.list()[0].connected);
        assert_eq!(metrics.sidecars_connected.get(), 0);
        assert_eq!((metrics.acks.get(), metrics.nacks.get()), (2, 1));
        Ok(())
    }

    #[test]
    fn the_connected_count_follows_sidecars_not_streams() -> Result<(), prometheus::Error> {
        let metrics = Metrics::new()?;
        let s = Sidecars::new(metrics.clone());
        let who = |id: &str| Subscriber {
            id: id.into(),
            service: "order".into(),
            version: None,
            admin: None,
        };
        s.connect(&who("a"));
        s.connect(&who("a"));
        s.connect(&who("b"));
        assert_eq!(metrics.sidecars_connected.get(), 2);
        s.disconnect("a");
        assert_eq!(metrics.sidecars_connected.get(), 2, "a has a stream left");
        s.disconnect("a");
        s.disconnect("a");
        assert_eq!(
            metrics.sidecars_connected.get(),
            1,
            "an extra close is no news"
        );
        s.disconnect("unknown");
        assert_eq!(metrics.sidecars_connected.get(), 1);
        let connected: Vec<_> = s.list().into_iter().filter(|l| l.connected).collect();
        assert_eq!(connected.len(), 1);
        assert_eq!(connected[0].id, "b");
        Ok(())
    }

    #[test]
    fn the_keepalive_line_is_one_json_line() {
        let line = keepalive_line();
        assert!(line.ends_with(b"\n"));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap_or_default();
        assert_eq!(v["type"], "keepalive");
    }
}
