//! The upstream's response on its way back: an accepted upgrade becomes a tunnel, hop-by-hop
//! headers are taken out, and the body carries the request's record (metrics, percentiles,
//! access log, span, and the concurrency slot) until it ends.

use super::headers::strip_hop_by_hop;
use super::telemetry::RequestTelemetry;
use super::upgrade;
use crate::body::{ResponseBody, UpstreamBody};
use crate::telemetry::metrics::StatusMetrics;
use crate::telemetry::stats::SlidingHistogram;
use crate::telemetry::Telemetry;
use http::Response;
use hyper::upgrade::OnUpgrade;
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

/// The response the client gets for the upstream's `res`.
pub fn forwarded(
    telemetry: &Telemetry,
    ctx: &mut RequestTelemetry,
    (metrics, stats): (&Arc<StatusMetrics>, &Arc<SlidingHistogram>),
    permit: OwnedSemaphorePermit,
    mut res: Response<UpstreamBody>,
    downstream_upgrade: Option<OnUpgrade>,
) -> Response<ResponseBody> {
    let switching = res.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    match (switching, downstream_upgrade) {
        (true, Some(down)) => {
            telemetry
                .metrics
                .upgrades
                .with_label_values(&[ctx.direction.as_str()])
                .inc();
            upgrade::tunnel(down, hyper::upgrade::on(&mut res));
            strip_hop_by_hop(res.headers_mut(), true);
        }
        _ => strip_hop_by_hop(res.headers_mut(), false),
    }
    let record = ctx.record(res.status(), metrics, stats, permit);
    res.map(|b| ResponseBody::upstream(b, record))
}
