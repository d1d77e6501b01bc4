//! The upstream's response on its way back: its framing made fit to relay ([`framing`]), an
//! accepted upgrade becomes a tunnel, hop-by-hop headers are taken out, and the body carries
//! the request's record (metrics, percentiles, access log, span, and the concurrency slot)
//! until it ends.

use super::framing;
use super::headers::strip_hop_by_hop;
use super::telemetry::RequestTelemetry;
use super::upgrade;
use crate::body::{ResponseBody, UpstreamBody};
use crate::error::ProxyError;
use crate::peer::TunnelHold;
use crate::telemetry::metrics::StatusMetrics;
use crate::telemetry::stats::SlidingHistogram;
use crate::telemetry::Telemetry;
use http::{Response, Version};
use hyper::upgrade::OnUpgrade;
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

/// The response the client gets for the upstream's `res`, or why it gets none (a 502, with
/// the slot given back).
pub fn forwarded(
    telemetry: &Telemetry,
    ctx: &mut RequestTelemetry,
    (metrics, stats): (&Arc<StatusMetrics>, &Arc<SlidingHistogram>),
    permit: OwnedSemaphorePermit,
    mut res: Response<UpstreamBody>,
    downstream_upgrade: Option<(OnUpgrade, TunnelHold)>,
    tunnel_idle: std::time::Duration,
) -> Result<Response<ResponseBody>, ProxyError> {
    framing::relay(&mut res)?;
    // The version is the client's connection's, not the upstream's: an HTTP/1.0 app must not
    // make hyper answer an HTTP/1.1 client in HTTP/1.0 and close its connection. hyper still
    // answers an HTTP/1.0 client in HTTP/1.0, and HTTP/2 ignores it.
    *res.version_mut() = Version::HTTP_11;
    let switching = res.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    match (switching, downstream_upgrade) {
        (true, Some(down)) => {
            telemetry
                .metrics
                .upgrades
                .with_label_values(&[ctx.direction.as_str()])
                .inc();
            let idled = telemetry
                .metrics
                .connection_timeouts
                .with_label_values(&[ctx.direction.as_str(), "tunnel_idle"]);
            upgrade::tunnel(down, hyper::upgrade::on(&mut res), tunnel_idle, idled);
            strip_hop_by_hop(res.headers_mut(), true);
        }
        _ => strip_hop_by_hop(res.headers_mut(), false),
    }
    let record = ctx.record(res.status(), metrics, stats, permit);
    Ok(res.map(|b| ResponseBody::upstream(b, record)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::test_support::sidecar;
    use crate::peer::Peer;
    use crate::Direction;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;
    use tokio::sync::Semaphore;

    #[tokio::test]
    async fn hop_by_hop_headers_go_and_the_slot_is_held_until_the_body_ends() {
        let sidecar = sidecar(
            "service: order\ndestinations:\n  - name: payment\n    \
             endpoints: [{address: \"127.0.0.1:9001\"}]\n",
        );
        let state = sidecar.snapshot.current().expect("applied");
        let dest = state.outbound.lookup(Some("payment")).expect("payment");
        let route = &dest.routes[0];
        let telemetry = &sidecar.telemetry;
        let peer = Peer::plaintext("127.0.0.1:1".parse().expect("addr"));
        let req = http::Request::get("/").body(()).expect("req");
        let mut ctx = RequestTelemetry::begin(telemetry, Direction::Outbound, &peer, &req);
        let slots = Arc::new(Semaphore::new(1));
        let permit = slots.clone().try_acquire_owned().expect("slot");
        let upstream = Response::builder()
            .header("connection", "x-internal")
            .header("x-internal", "1")
            .header("keep-alive", "timeout=5")
            .header("x-app", "kept")
            .body(UpstreamBody::ReadAhead(
                VecDeque::from([http_body::Frame::data(bytes::Bytes::from_static(b"ok"))]),
                None,
            ))
            .expect("response");
        let res = forwarded(
            telemetry,
            &mut ctx,
            (route.metrics_for(None), &dest.stats),
            permit,
            upstream,
            None,
            std::time::Duration::from_secs(60),
        )
        .expect("relayed");
        for gone in ["connection", "x-internal", "keep-alive"] {
            assert!(!res.headers().contains_key(gone), "{gone} passed through");
        }
        assert_eq!(res.headers()["x-app"], "kept");
        assert_eq!(slots.available_permits(), 0, "held while the body is out");
        let body = res.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body, "ok");
        assert_eq!(
            slots.available_permits(),
            1,
            "given back when the body ended"
        );
        assert_eq!(
            dest.stats.percentiles().count,
            1,
            "the request was recorded once"
        );
    }

    #[tokio::test]
    async fn an_http10_answer_goes_on_as_http11_and_a_foreign_coding_is_refused() {
        let sidecar = sidecar(
            "service: order\ndestinations:\n  - name: payment\n    \
             endpoints: [{address: \"127.0.0.1:9001\"}]\n",
        );
        let state = sidecar.snapshot.current().expect("applied");
        let dest = state.outbound.lookup(Some("payment")).expect("payment");
        let route = &dest.routes[0];
        let peer = Peer::plaintext("127.0.0.1:1".parse().expect("addr"));
        let req = http::Request::get("/").body(()).expect("req");
        let slots = Arc::new(Semaphore::new(1));
        let upstream = |te: Option<&str>| {
            let mut b = Response::builder().version(Version::HTTP_10);
            if let Some(te) = te {
                b = b.header("transfer-encoding", te);
            }
            b.body(UpstreamBody::ReadAhead(VecDeque::new(), None))
                .expect("response")
        };
        let relay = |res| {
            let mut ctx =
                RequestTelemetry::begin(&sidecar.telemetry, Direction::Outbound, &peer, &req);
            let permit = slots.clone().try_acquire_owned().expect("slot");
            forwarded(
                &sidecar.telemetry,
                &mut ctx,
                (route.metrics_for(None), &dest.stats),
                permit,
                res,
                None,
                std::time::Duration::from_secs(60),
            )
        };
        let res = relay(upstream(None)).expect("relayed");
        assert_eq!(res.version(), Version::HTTP_11);
        drop(res);
        assert_eq!(
            relay(upstream(Some("gzip"))).err(),
            Some(ProxyError::UpstreamFraming)
        );
        assert_eq!(slots.available_permits(), 1, "the slot is given back");
    }
}
