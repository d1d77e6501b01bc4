//! Self-registration: the sidecar registers its instance (service, version, the address other
//! sidecars reach it on) with a lease and heartbeats it. When the control plane forgets the
//! lease (it restarted, or the lease expired during a partition) the heartbeat gets 404 and
//! the sidecar registers again, which is how the registry rebuilds itself after a restart.
//!
//! Leaving is final: [`Lease::deregister`] ends the heartbeat task before it deletes the
//! lease, so a draining sidecar never puts itself back in front of callers.

use super::api::{Api, ApiError};
use super::{backoff, subscribe::encode, ControlPlane};
use crate::sidecar::Sidecar;
use serde::Deserialize;
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const TTL_SECS: u64 = 10;

#[derive(Deserialize)]
struct Registered {
    id: String,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

/// The registration task, for deregistration at shutdown.
pub struct Lease {
    leave: watch::Sender<bool>,
    /// Ends with the lease it held when told to leave.
    task: Option<JoinHandle<Option<String>>>,
}

impl Lease {
    /// Stops registering and heartbeating for good, then removes the instance so callers stop
    /// sending to it; best effort, bounded in time. True when an instance was registered (so
    /// callers may still be learning that it left).
    pub async fn deregister(self, api: &Api) -> bool {
        let Some(task) = self.task else {
            return false;
        };
        self.leave.send_replace(true);
        // The task only finishes a registration already sent, so no lease outlives this.
        let Ok(Some(id)) = task.await else {
            return false;
        };
        let path = format!("/v1/registry/instances/{}", encode(&id));
        match api.call(http::Method::DELETE, &path, None).await {
            Ok(_) => tracing::info!("deregistered from the control plane"),
            Err(e) => tracing::warn!(error = %e, "could not deregister; the lease will expire"),
        }
        true
    }
}

pub fn spawn(cp: ControlPlane, api: Api, sidecar: Arc<Sidecar>) -> Lease {
    let (leave, left) = watch::channel(false);
    let task = cp
        .advertise
        .map(|advertise| tokio::spawn(hold(cp, advertise, api, sidecar, left)));
    Lease { leave, task }
}

/// Runs `f` unless the sidecar leaves first (`None`).
async fn unless_left<F: Future>(left: &mut watch::Receiver<bool>, f: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        // A dropped sender is the process ending: leave too.
        _ = left.wait_for(|l| *l) => None,
        out = f => Some(out),
    }
}

/// Registers and heartbeats until told to leave; returns the lease held then.
async fn hold(
    cp: ControlPlane,
    advertise: std::net::SocketAddr,
    api: Api,
    sidecar: Arc<Sidecar>,
    mut left: watch::Receiver<bool>,
) -> Option<String> {
    let mut ports = serde_json::Map::new();
    ports.insert("inbound".into(), advertise.port().into());
    if let Some(app) = &cp.app {
        ports.insert("app".into(), app.port().into());
    }
    let body = json!({
        "service": cp.service,
        "version": cp.version,
        "address": advertise.ip().to_string(),
        "ports": ports,
        "labels": {"sidecar": cp.sidecar_id},
        "ttl_secs": TTL_SECS,
    });
    let mut failures = 0u32;
    loop {
        unless_left(&mut left, api.credential_ready()).await?;
        // Not cancelled: the control plane may have stored a registration whose answer is
        // still on its way, and only its id lets deregistration remove it.
        let reg = match api
            .call(http::Method::POST, "/v1/registry/instances", Some(&body))
            .await
        {
            Ok(bytes) => serde_json::from_slice::<Registered>(&bytes).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let reg = match reg {
            Ok(r) => r,
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, "registration failed; retrying");
                unless_left(&mut left, tokio::time::sleep(backoff(failures))).await?;
                continue;
            }
        };
        failures = 0;
        if *left.borrow() {
            return Some(reg.id);
        }
        sidecar.telemetry.metrics.registered.set(1);
        tracing::info!(instance = %reg.id, %advertise, "registered with the control plane");
        let every = Duration::from_secs(reg.ttl_secs.unwrap_or(TTL_SECS).max(1)) / 3;
        let path = format!("/v1/registry/instances/{}/heartbeat", encode(&reg.id));
        let forgotten = loop {
            let beat = async {
                tokio::time::sleep(every).await;
                api.call(http::Method::PUT, &path, None).await
            };
            match unless_left(&mut left, beat).await {
                None => break false,
                Some(Ok(_)) => {}
                Some(Err(ApiError::Status { status, .. }))
                    if status == http::StatusCode::NOT_FOUND =>
                {
                    tracing::warn!("the control plane forgot this instance; registering again");
                    break true;
                }
                Some(Err(e)) => tracing::warn!(error = %e, "heartbeat failed; will retry"),
            }
        };
        sidecar.telemetry.metrics.registered.set(0);
        if !forgotten {
            return Some(reg.id);
        }
    }
}
