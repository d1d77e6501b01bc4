//! Says when the sidecar cannot serve, without being asked: every 10 s it tries the local app
//! (a TCP connect), and it logs why it is not ready, or that the app does not answer, when that
//! changes and once a minute while it lasts. `/ready` gives the same words.

use crate::sidecar::Sidecar;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

const EVERY: Duration = Duration::from_secs(10);
/// Looks between two log lines about the same problem: a minute.
const REPEAT: u32 = 6;

pub fn spawn(sidecar: Arc<Sidecar>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Not at once: a sidecar just started is waiting for its snapshot, which is no news.
        tick.tick().await;
        let (mut last, mut since) = (None::<String>, 0u32);
        loop {
            tick.tick().await;
            if sidecar.lifecycle.is_draining() {
                return;
            }
            let app = app_problem(&sidecar).await;
            sidecar.lifecycle.set_app_problem(app.clone());
            let problem = match sidecar.lifecycle.readiness(&sidecar.snapshot) {
                Err(reason) => Some(format!("not ready: {reason}")),
                Ok(()) => app.map(|a| format!("ready, but {a}")),
            };
            since += 1;
            if problem != last || (problem.is_some() && since >= REPEAT) {
                match &problem {
                    Some(p) => tracing::warn!("{p}"),
                    None if last.is_some() => tracing::info!("ready, and the app answers"),
                    None => {}
                }
                since = 0;
            }
            last = problem;
        }
    });
}

/// Why the app does not take connections, or `None` when it does (or there is none).
async fn app_problem(sidecar: &Sidecar) -> Option<String> {
    let state = sidecar.snapshot.current()?;
    let app = state.inbound.as_ref()?.endpoints.first()?.addr;
    match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(app)).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(format!("the app at {app} does not answer: {e}")),
        Err(_) => Some(format!(
            "the app at {app} does not answer: connect timed out"
        )),
    }
}
