//! The REST API: the route table ([`ROUTES`], also described by `control/openapi.yaml`) with
//! the access each route needs, the router built from it, and what every route shares (who
//! the caller is, whether it may, and request metrics). Handlers live in one module per
//! resource; those that act for one service hold the caller to it.

mod ca;
mod canary;
mod error;
mod health;
mod identity;
mod registry;
mod resources;
mod sidecars;

pub use error::ApiError;

use crate::access::{self, Access, Caller, OperatorTokens, Refusal};
use crate::metrics::Metrics;
use crate::push::Sidecars;
use crate::state::Handle;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put, MethodRouter};
use axum::Router;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Every route, as (method, path template, what it needs). The router is built from this
/// table, and a test holds it equal to the OpenAPI document.
pub const ROUTES: &[(&str, &str, Access)] = &[
    ("GET", "/healthz", Access::Public),
    ("GET", "/readyz", Access::Public),
    ("GET", "/v1/openapi.yaml", Access::Public),
    ("GET", "/metrics", Access::Read),
    ("POST", "/v1/apply", Access::Admin),
    ("GET", "/v1/services", Access::Read),
    ("GET", "/v1/services/{name}", Access::Read),
    ("DELETE", "/v1/services/{name}", Access::Admin),
    ("PATCH", "/v1/services/{name}/split", Access::Admin),
    ("GET", "/v1/routes", Access::Read),
    ("GET", "/v1/routes/{name}", Access::Read),
    ("DELETE", "/v1/routes/{name}", Access::Admin),
    ("GET", "/v1/policies", Access::Read),
    ("GET", "/v1/policies/{name}", Access::Read),
    ("DELETE", "/v1/policies/{name}", Access::Admin),
    ("POST", "/v1/registry/instances", Access::Workload),
    ("GET", "/v1/registry/instances", Access::Read),
    (
        "PUT",
        "/v1/registry/instances/{id}/heartbeat",
        Access::Workload,
    ),
    ("DELETE", "/v1/registry/instances/{id}", Access::Workload),
    ("GET", "/v1/stream", Access::Workload),
    ("POST", "/v1/sidecars/{id}/ack", Access::Workload),
    ("GET", "/v1/sidecars", Access::Read),
    ("POST", "/v1/identity/tokens", Access::Admin),
    ("GET", "/v1/identity/tokens", Access::Read),
    ("DELETE", "/v1/identity/tokens/{id}", Access::Admin),
    ("POST", "/v1/identity/certificates", Access::Certificate),
    ("GET", "/v1/ca/roots", Access::Read),
    ("POST", "/v1/ca/roots", Access::Admin),
    ("DELETE", "/v1/ca/roots/{id}", Access::Admin),
    ("GET", "/v1/ca/status", Access::Read),
];

/// Who the TLS connection a request came on proved to be: the service of its verified
/// workload certificate, if it presented one.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub workload: Option<Arc<str>>,
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub state: Handle,
    pub sidecars: Arc<Sidecars>,
    /// Snapshot lines shared by every push stream of a service.
    pub lines: Arc<crate::push::Lines>,
    pub metrics: Metrics,
    pub tokens: Arc<OperatorTokens>,
    /// True once the store is open; false again when shutting down.
    pub ready: Arc<AtomicBool>,
    pub keepalive: Duration,
    pub shutdown: watch::Receiver<bool>,
}

/// The handler of one entry of [`ROUTES`].
fn handler(method: &str, path: &str) -> Option<MethodRouter<AppState>> {
    Some(match (method, path) {
        ("GET", "/healthz") => get(health::healthz),
        ("GET", "/readyz") => get(health::readyz),
        ("GET", "/v1/openapi.yaml") => get(health::openapi),
        ("GET", "/metrics") => get(health::metrics),
        ("POST", "/v1/apply") => post(resources::apply),
        ("GET", "/v1/services") => get(resources::list_services),
        ("GET", "/v1/services/{name}") => get(resources::get_service),
        ("DELETE", "/v1/services/{name}") => delete(resources::delete_service),
        ("PATCH", "/v1/services/{name}/split") => patch(canary::set_split),
        ("GET", "/v1/routes") => get(resources::list_routes),
        ("GET", "/v1/routes/{name}") => get(resources::get_route),
        ("DELETE", "/v1/routes/{name}") => delete(resources::delete_route),
        ("GET", "/v1/policies") => get(resources::list_policies),
        ("GET", "/v1/policies/{name}") => get(resources::get_policy),
        ("DELETE", "/v1/policies/{name}") => delete(resources::delete_policy),
        ("POST", "/v1/registry/instances") => post(registry::register),
        ("GET", "/v1/registry/instances") => get(registry::list),
        ("PUT", "/v1/registry/instances/{id}/heartbeat") => put(registry::heartbeat),
        ("DELETE", "/v1/registry/instances/{id}") => delete(registry::deregister),
        ("GET", "/v1/stream") => get(sidecars::stream),
        ("POST", "/v1/sidecars/{id}/ack") => post(sidecars::ack),
        ("GET", "/v1/sidecars") => get(sidecars::list),
        ("POST", "/v1/identity/tokens") => post(identity::create_token),
        ("GET", "/v1/identity/tokens") => get(identity::list_tokens),
        ("DELETE", "/v1/identity/tokens/{id}") => delete(identity::revoke_token),
        ("POST", "/v1/identity/certificates") => post(identity::sign),
        ("GET", "/v1/ca/roots") => get(ca::list_roots),
        ("POST", "/v1/ca/roots") => post(ca::rotate),
        ("DELETE", "/v1/ca/roots/{id}") => delete(ca::drop_root),
        ("GET", "/v1/ca/status") => get(ca::status),
        _ => return None,
    })
}

pub fn router(app: AppState) -> Router {
    let mut router = Router::new();
    for (method, path, access) in ROUTES {
        match handler(method, path) {
            // Each method of a path is guarded by its own access: the layer sits on the
            // method router, under the path's route.
            Some(h) => {
                let access = *access;
                let h = h.layer(axum::middleware::from_fn_with_state(
                    app.clone(),
                    move |state, req, next| guard(access, state, req, next),
                ));
                router = router.route(path, h)
            }
            // Unreachable while `every_route_has_a_handler` passes.
            None => tracing::error!(method, path, "route without a handler"),
        }
    }
    router
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(app.clone(), count))
        .with_state(app)
}

/// Works out the caller, refuses it unless `access` allows it, and hands it to the handler.
async fn guard(
    access: Access,
    State(app): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let workload = req
        .extensions()
        .get::<Peer>()
        .and_then(|p| p.workload.clone());
    let caller = Caller::identify(&app.tokens, req.headers(), workload.as_deref());
    match access::check(access, &caller) {
        Ok(()) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(Refusal::Unauthenticated(reason)) => ApiError::Unauthenticated(reason).into_response(),
        Err(Refusal::Forbidden(reason)) => {
            tracing::warn!(?caller, route = %req.uri().path(), %reason, "request refused");
            ApiError::Forbidden(reason).into_response()
        }
    }
}

/// Every request is counted by route template and status.
async fn count(
    State(app): State<AppState>,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let route = matched.map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .cloned()
        .unwrap_or_else(new_request_id);
    let resp = next.run(req).await;
    app.metrics
        .api_requests
        .with_label_values(&[route.as_str(), resp.status().as_str()])
        .inc();
    with_request_id(resp, request_id).await
}

const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

fn new_request_id() -> http::HeaderValue {
    let mut bytes = [0u8; 16];
    let _ = getrandom::fill(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    http::HeaderValue::from_str(&hex).unwrap_or_else(|_| http::HeaderValue::from_static("0"))
}

/// Every answer carries `x-request-id` (the caller's, or a new one); an error's JSON body
/// carries it as `request_id` too, as the proxy's do.
async fn with_request_id(resp: Response, id: http::HeaderValue) -> Response {
    use http_body_util::BodyExt;
    let (mut parts, body) = resp.into_parts();
    parts.headers.insert(REQUEST_ID, id.clone());
    let json = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|c| c.as_bytes().starts_with(b"application/json"));
    if !parts.status.is_client_error() && !parts.status.is_server_error() || !json {
        return Response::from_parts(parts, body);
    }
    // An error body is small and whole: read, add the id, put back.
    let Ok(collected) = body.collect().await else {
        return Response::from_parts(parts, axum::body::Body::empty());
    };
    let bytes = collected.to_bytes();
    let body = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(mut m)) => {
            m.insert("request_id".into(), id.to_str().unwrap_or_default().into());
            let text = serde_json::Value::Object(m).to_string();
            parts.headers.remove(http::header::CONTENT_LENGTH);
            axum::body::Body::from(text)
        }
        _ => axum::body::Body::from(bytes),
    };
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_route_has_a_handler() {
        for (method, path, _) in ROUTES {
            assert!(handler(method, path).is_some(), "{method} {path}");
        }
        let unique: BTreeSet<_> = ROUTES.iter().map(|(m, p, _)| (m, p)).collect();
        assert_eq!(unique.len(), ROUTES.len(), "a route is listed twice");
    }

    #[test]
    fn routes_match_the_openapi_document() -> Result<(), Box<dyn std::error::Error>> {
        let doc: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(include_str!("../../openapi.yaml"))?;
        assert!(
            doc.get("openapi")
                .and_then(|v| v.as_str())
                .is_some_and(|v| v.starts_with("3.")),
            "an OpenAPI 3 document"
        );
        let paths = doc
            .get("paths")
            .and_then(|p| p.as_mapping())
            .ok_or("no paths")?;
        let mut documented = BTreeSet::new();
        for (path, item) in paths {
            let path = path.as_str().ok_or("path is not a string")?;
            for (method, _) in item.as_mapping().ok_or("path item is not a mapping")? {
                let method = method.as_str().ok_or("method is not a string")?;
                if ["get", "put", "post", "delete", "patch", "head", "options"].contains(&method) {
                    documented.insert((method.to_ascii_uppercase(), path.to_string()));
                }
            }
        }
        let served: BTreeSet<_> = ROUTES
            .iter()
            .map(|(m, p, _)| (m.to_string(), p.to_string()))
            .collect();
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty(),
            "served but not in openapi.yaml: {undocumented:?}"
        );
        assert!(
            unserved.is_empty(),
            "in openapi.yaml but not served: {unserved:?}"
        );
        Ok(())
    }
}
