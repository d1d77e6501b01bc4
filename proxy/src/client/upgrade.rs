//! A request that asks to upgrade (WebSocket) to a peer sidecar. The sidecars' HTTP/2 cannot
//! carry `Upgrade`, so it gets an mTLS connection of its own with ALPN http/1.1, used once:
//! after a 101 it becomes the tunnel, and any other answer ends it.

use super::{LimitedConnector, UpstreamError};
use crate::body::RequestBody;
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use std::sync::Arc;

pub async fn send(
    connector: &LimitedConnector,
    endpoint: &http::Uri,
    tls: Arc<rustls::ClientConfig>,
    mut req: http::Request<RequestBody>,
) -> Result<http::Response<Incoming>, UpstreamError> {
    let io = connector
        .connect_tls(endpoint.clone(), tls)
        .await
        .map_err(UpstreamError::Connect)?;
    let (mut sender, conn) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|e| UpstreamError::Connect(e.into()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upgrade connection to the peer sidecar ended");
        }
    });
    // Origin form: the peer routes by the Host the request kept.
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = pq.into();
    sender.send_request(req).await.map_err(UpstreamError::Http)
}
