//! The seam between the request path and the network: [`SendUpstream`] sends one attempt to
//! one endpoint and says, when it fails, how ([`Failure`]). The proxy uses [`Pooled`], the
//! destination's pooled clients; a test replaces it with a scripted upstream to run the whole
//! request path in process under paused time.

use crate::body::RequestBody;
use crate::client::h2::TlsCounters;
use crate::error::BoxError;
use crate::retry::policy::{classify, Failure};
use crate::routing::{Dest, EndpointTarget};
use http::{Request, Response};
use hyper::body::Incoming;
use std::future::Future;

/// Why an attempt got no response: the failure as the retry policy sees it, and its cause
/// for the debug log.
#[derive(Debug)]
pub struct SendError {
    pub failure: Failure,
    pub cause: BoxError,
}

/// Sends one attempt.
pub trait SendUpstream: Sync {
    fn send(
        &self,
        dest: &Dest,
        endpoint: &EndpointTarget,
        req: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<Incoming>, SendError>> + Send;
}

/// The destination's own client: pooled HTTP/1 keep-alive connections or one multiplexed
/// HTTP/2 connection per endpoint, with mTLS as the snapshot says.
pub struct Pooled;

impl SendUpstream for Pooled {
    async fn send(
        &self,
        dest: &Dest,
        endpoint: &EndpointTarget,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let tls = TlsCounters {
            handshakes: &dest.counters.tls_handshakes,
            failures: &dest.counters.tls_failures,
        };
        let upgrade = dest.tunnels.upgrade_tls.as_ref().filter(|_| {
            req.version() == http::Version::HTTP_11
                && crate::forward::headers::wants_upgrade(req.headers())
        });
        let sent = match upgrade {
            Some(cfg) => {
                dest.client
                    .send_upgrade(endpoint, cfg.clone(), &tls, req)
                    .await
            }
            None => dest.client.send(endpoint, &tls, req).await,
        };
        sent.map_err(|e| SendError {
            failure: classify(&e),
            cause: e.into(),
        })
    }
}
