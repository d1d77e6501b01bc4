//! Reading gRPC outcomes: `grpc-status` from response headers (trailers-only responses) or
//! trailers, for retry decisions.

use http::HeaderMap;

pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

pub fn status(headers: &HeaderMap) -> Option<u16> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_and_content_type() {
        let mut h = HeaderMap::new();
        assert_eq!(status(&h), None);
        h.insert("grpc-status", "14".parse().unwrap());
        h.insert("content-type", "application/grpc+proto".parse().unwrap());
        assert_eq!(status(&h), Some(14));
        assert!(is_grpc(&h));
        h.insert("grpc-status", "x".parse().unwrap());
        assert_eq!(status(&h), None);
    }
}
