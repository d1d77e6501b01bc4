//! Strict mTLS per request. The inbound listener decides a connection's security once, at
//! accept, under the snapshot in force then; a plaintext connection accepted under permissive
//! (or off) must not outlive a switch to strict. So every inbound request checks the mode of
//! the snapshot it runs on, and a plaintext one under strict is refused and its connection
//! ended.

use crate::error::ERROR_HEADER;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode, Version};
use outrigger_config::MtlsMode;

/// The `x-outrigger-error` reason and metric label.
pub const REASON: &str = "mtls-required";

const BODY: &str = "{\"error\":\"mtls-required\",\"message\":\"this service accepts only mutual TLS; the connection is closed\"}\n";

/// Whether a request must be refused: strict is in force and it did not come over mTLS.
#[inline]
pub fn refuses(mode: MtlsMode, over_mtls: bool) -> bool {
    mode == MtlsMode::Strict && !over_mtls
}

/// 403 in the style of the proxy's other errors (`crate::error`). HTTP/1 is told the
/// connection closes; HTTP/2 learns it from the GOAWAY that follows.
pub fn response(version: Version) -> Response<Bytes> {
    let mut res = Response::new(Bytes::from_static(BODY.as_bytes()));
    *res.status_mut() = StatusCode::FORBIDDEN;
    let h = res.headers_mut();
    h.insert(ERROR_HEADER, HeaderValue::from_static(REASON));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if version < Version::HTTP_2 {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plaintext_under_strict_is_refused() {
        for mode in [MtlsMode::Off, MtlsMode::Permissive, MtlsMode::Strict] {
            assert!(!refuses(mode, true), "{mode:?} over mTLS");
            assert_eq!(refuses(mode, false), mode == MtlsMode::Strict, "{mode:?}");
        }
    }

    #[test]
    fn the_refusal_reads_like_the_proxys_other_errors() {
        let res = response(Version::HTTP_11);
        assert_eq!(res.status(), 403);
        assert_eq!(res.headers()[ERROR_HEADER], REASON);
        assert_eq!(res.headers()[header::CONNECTION], "close");
        let body: serde_json::Value = serde_json::from_slice(res.body()).expect("JSON");
        assert_eq!(body["error"], REASON);
        assert!(!response(Version::HTTP_2)
            .headers()
            .contains_key(header::CONNECTION));
    }
}
