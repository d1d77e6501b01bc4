//! Steady traffic through a proxy for as long as an operation takes (an outage, a rotation),
//! counting every outcome, so a test can show that no request failed throughout.

use crate::client;
use crate::eventually;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct SteadyLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SteadyLoad {
    /// Sequential GETs of `/` to `addr` with `Host: host`; only a 200 counts as ok.
    pub fn start(addr: SocketAddr, host: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (s, o, f, host) = (stop.clone(), ok.clone(), failed.clone(), host.to_string());
        let task = tokio::spawn(async move {
            let c = client::h1();
            while !s.load(Ordering::SeqCst) {
                let req = client::request("GET", &format!("http://{addr}/"))
                    .header("host", host.as_str())
                    .body(client::empty())
                    .expect("request");
                match tokio::time::timeout(Duration::from_secs(10), c.request(req)).await {
                    Ok(Ok(r)) if r.status() == 200 => o.fetch_add(1, Ordering::SeqCst),
                    _ => f.fetch_add(1, Ordering::SeqCst),
                };
            }
        });
        Self {
            stop,
            ok,
            failed,
            task,
        }
    }

    pub fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    /// Requests that failed so far.
    pub fn failed(&self) -> usize {
        self.failed.load(Ordering::SeqCst)
    }

    /// Waits until `n` more requests than now have succeeded.
    pub async fn progress(&self, n: usize, within: Duration, what: &str) {
        let seen = self.ok();
        eventually(within, what, || async {
            (self.ok() > seen + n).then_some(())
        })
        .await;
    }

    /// Stops the traffic: (succeeded, failed).
    pub async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("load task");
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}
