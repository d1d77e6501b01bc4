//! The REST API: the route table ([`ROUTES`], also described by `control/openapi.yaml`), the
//! router built from it, and what every route shares (auth and request metrics). Handlers
//! live in one module per resource.

mod ca;
mod canary;
mod error;
mod health;
mod identity;
mod registry;
mod resources;
mod sidecars;

pub use error::ApiError;

use crate::auth::Token;
use crate::metrics::Metrics;
use crate::push::Sidecars;
use crate::state::Handle;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put, MethodRouter};
use axum::Router;
use http::Method;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Every route, as (method, path template). The router is built from this table, and a test
/// holds it equal to the OpenAPI document.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/v1/apply"),
    ("GET", "/v1/services"),
    ("GET", "/v1/services/{name}"),
    ("DELETE", "/v1/services/{name}"),
    ("PATCH", "/v1/services/{name}/split"),
    ("GET", "/v1/routes"),
    ("GET", "/v1/routes/{name}"),
    ("DELETE", "/v1/routes/{name}"),
    ("GET", "/v1/policies"),
    ("GET", "/v1/policies/{name}"),
    ("DELETE", "/v1/policies/{name}"),
    ("POST", "/v1/registry/instances"),
    ("GET", "/v1/registry/instances"),
    ("PUT", "/v1/registry/instances/{id}/heartbeat"),
    ("DELETE", "/v1/registry/instances/{id}"),
    ("GET", "/v1/stream"),
    ("POST", "/v1/sidecars/{id}/ack"),
    ("GET", "/v1/sidecars"),
    ("POST", "/v1/identity/tokens"),
    ("POST", "/v1/identity/certificates"),
    ("GET", "/v1/ca/roots"),
    ("POST", "/v1/ca/roots"),
    ("DELETE", "/v1/ca/roots/{id}"),
];

/// Writes that a bootstrap token authorizes instead of the API token: their handlers check it.
const BOOTSTRAP_AUTH: &[(&str, &str)] = &[("POST", "/v1/identity/certificates")];

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub state: Handle,
    pub sidecars: Arc<Sidecars>,
    pub metrics: Metrics,
    pub token: Arc<Token>,
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
        ("POST", "/v1/identity/certificates") => post(identity::sign),
        ("GET", "/v1/ca/roots") => get(ca::list_roots),
        ("POST", "/v1/ca/roots") => post(ca::rotate),
        ("DELETE", "/v1/ca/roots/{id}") => delete(ca::drop_root),
        _ => return None,
    })
}

pub fn router(app: AppState) -> Router {
    let mut router = Router::new();
    for (method, path) in ROUTES {
        match handler(method, path) {
            Some(h) => router = router.route(path, h),
            // Unreachable while `every_route_has_a_handler` passes.
            None => tracing::error!(method, path, "route without a handler"),
        }
    }
    router
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

/// Writes need the API token (but see [`BOOTSTRAP_AUTH`]); every request is counted by route
/// template and status.
async fn guard(
    State(app): State<AppState>,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let route = matched.map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let read = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let bootstrap = BOOTSTRAP_AUTH
        .iter()
        .any(|(m, p)| req.method().as_str() == *m && route == *p);
    let resp = if read || bootstrap || app.token.authorizes(req.headers()) {
        next.run(req).await
    } else {
        ApiError::Unauthorized.into_response()
    };
    app.metrics
        .api_requests
        .with_label_values(&[route.as_str(), resp.status().as_str()])
        .inc();
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_route_has_a_handler() {
        for (method, path) in ROUTES {
            assert!(handler(method, path).is_some(), "{method} {path}");
        }
        let unique: BTreeSet<_> = ROUTES.iter().collect();
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
            .map(|(m, p)| (m.to_string(), p.to_string()))
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
