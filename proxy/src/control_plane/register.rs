//! Self-registration: the sidecar registers its instance (service, version, the address other
//! sidecars reach it on) with a lease and heartbeats it. When the control plane forgets the
//! lease (it restarted, or the lease expired during a partition) the heartbeat gets 404 and
//! the sidecar registers again, which is how the registry rebuilds itself after a restart.

use super::api::{Api, ApiError};
use super::{backoff, subscribe::encode, ControlPlane};
use crate::sidecar::Sidecar;
use serde::Deserialize;
use serde_json::json;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

const TTL_SECS: u64 = 10;

#[derive(Deserialize)]
struct Registered {
    id: String,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

/// The current lease, for deregistration at shutdown.
#[derive(Clone, Default)]
pub struct Lease(Arc<Mutex<Option<String>>>);

impl Lease {
    fn set(&self, id: Option<String>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = id;
    }

    fn get(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Removes the instance so callers stop sending to it; best effort, bounded in time.
    pub async fn deregister(&self, api: &Api) {
        if let Some(id) = self.get() {
            let path = format!("/v1/registry/instances/{}", encode(&id));
            match api.call(http::Method::DELETE, &path, None).await {
                Ok(_) => tracing::info!("deregistered from the control plane"),
                Err(e) => tracing::warn!(error = %e, "could not deregister; the lease will expire"),
            }
            self.set(None);
        }
    }
}

pub fn spawn(cp: ControlPlane, api: Api, sidecar: Arc<Sidecar>) -> Lease {
    let lease = Lease::default();
    let Some(advertise) = cp.advertise else {
        return lease;
    };
    let held = lease.clone();
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            api.credential_ready().await;
            let mut ports = serde_json::Map::new();
            ports.insert("inbound".into(), advertise.port().into());
            if let Some(app) = cp.app {
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
            let reg = match api
                .call(http::Method::POST, "/v1/registry/instances", Some(&body))
                .await
            {
                Ok(bytes) => {
                    serde_json::from_slice::<Registered>(&bytes).map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            let reg = match reg {
                Ok(r) => r,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, "registration failed; retrying");
                    tokio::time::sleep(backoff(failures)).await;
                    continue;
                }
            };
            failures = 0;
            held.set(Some(reg.id.clone()));
            sidecar.telemetry.metrics.registered.set(1);
            tracing::info!(instance = %reg.id, %advertise, "registered with the control plane");
            let every = Duration::from_secs(reg.ttl_secs.unwrap_or(TTL_SECS).max(1)) / 3;
            let path = format!("/v1/registry/instances/{}/heartbeat", encode(&reg.id));
            loop {
                tokio::time::sleep(every).await;
                match api.call(http::Method::PUT, &path, None).await {
                    Ok(_) => {}
                    Err(ApiError::Status { status, .. })
                        if status == http::StatusCode::NOT_FOUND =>
                    {
                        tracing::warn!("the control plane forgot this instance; registering again");
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "heartbeat failed; will retry"),
                }
            }
            sidecar.telemetry.metrics.registered.set(0);
            held.set(None);
        }
    });
    lease
}
