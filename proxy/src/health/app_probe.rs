//! The app's own HTTP probes, made by the sidecar for the kubelet. Under interception a
//! kubelet probe to an app port would be redirected into the sidecar's inbound listener, where
//! strict mTLS refuses plaintext. So `outrigger inject` points each HTTP probe at the health
//! port, `/app-health/<container>/<livez|readyz|startupz>`, and hands the original targets to
//! the sidecar in `OUTRIGGER_APP_PROBES` (Istio's `ISTIO_KUBE_APP_PROBERS` does the same):
//!
//! ```json
//! {"/app-health/web/readyz": {"port": 8080, "path": "/healthz", "headers": [{"name": "x", "value": "y"}]}}
//! ```
//!
//! The sidecar makes the request to the app on loopback (its own connections are never
//! redirected) and answers with the app's status, so the kubelet's thresholds still apply.

use super::http_get::request;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// The kubelet's own default probe timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ProbeSpecError {
    #[error("OUTRIGGER_APP_PROBES is not valid JSON for app probes: {0}")]
    Json(#[from] serde_json::Error),
    #[error("OUTRIGGER_APP_PROBES: {path:?}: {reason}")]
    Probe { path: String, reason: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    port: u16,
    #[serde(default = "root")]
    path: String,
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    headers: Vec<Header>,
    #[serde(default, rename = "timeoutSeconds")]
    timeout_seconds: Option<u64>,
}

fn root() -> String {
    "/".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    name: String,
    value: String,
}

/// One probe, ready to run.
#[derive(Debug, Clone)]
pub struct AppProbe {
    addr: SocketAddr,
    path: String,
    headers: HeaderMap,
    timeout: Duration,
}

/// The probes by the path the kubelet asks for.
#[derive(Debug, Clone, Default)]
pub struct AppProbes(HashMap<String, AppProbe>);

impl AppProbes {
    /// Parses `OUTRIGGER_APP_PROBES`; every entry is checked now, so a bad one stops the start.
    pub fn parse(json: &str) -> Result<Self, ProbeSpecError> {
        let specs: HashMap<String, Spec> = serde_json::from_str(json)?;
        let mut probes = HashMap::new();
        for (path, spec) in specs {
            let fail = |reason: String| ProbeSpecError::Probe {
                path: path.clone(),
                reason,
            };
            if !path.starts_with("/app-health/") {
                return Err(fail("must start with /app-health/".into()));
            }
            if let Some(s) = spec.scheme.as_deref() {
                if !s.eq_ignore_ascii_case("http") {
                    return Err(fail(format!(
                        "scheme {s:?} is not supported: only HTTP probes are rewritten"
                    )));
                }
            }
            if !spec.path.starts_with('/') {
                return Err(fail(format!("path {:?} must start with /", spec.path)));
            }
            let mut headers = HeaderMap::new();
            for h in &spec.headers {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|e| fail(format!("header name {:?}: {e}", h.name)))?;
                let value = HeaderValue::from_str(&h.value)
                    .map_err(|e| fail(format!("header {:?}: {e}", h.name)))?;
                headers.append(name, value);
            }
            let timeout = spec
                .timeout_seconds
                .map_or(DEFAULT_TIMEOUT, |s| Duration::from_secs(s.clamp(1, 60)));
            probes.insert(
                path.clone(),
                AppProbe {
                    addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), spec.port),
                    path: spec.path,
                    headers,
                    timeout,
                },
            );
        }
        Ok(Self(probes))
    }

    pub fn get(&self, path: &str) -> Option<&AppProbe> {
        self.0.get(path)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl AppProbe {
    /// The app's status for the kubelet (which counts 200–399 as success) and the start of its
    /// body (what a failing probe said is then in the kubelet's event), or 503 with the reason
    /// when the app did not answer.
    pub async fn run(&self) -> (StatusCode, bytes::Bytes) {
        match request(
            Method::GET,
            self.addr,
            &self.path,
            &self.headers,
            self.timeout,
        )
        .await
        {
            Ok(answer) => answer,
            Err(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                bytes::Bytes::from(format!("app probe failed: {e}\n")),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_parse_with_their_defaults_and_bad_ones_are_named() {
        let p = AppProbes::parse(
            r#"{"/app-health/web/readyz": {"port": 8080, "path": "/healthz", "headers": [{"name": "x-probe", "value": "1"}]},
                "/app-health/web/livez": {"port": 8081}}"#,
        )
        .expect("valid");
        assert_eq!(p.len(), 2);
        let r = p.get("/app-health/web/readyz").expect("readyz");
        assert_eq!(r.addr.port(), 8080);
        assert_eq!(r.path, "/healthz");
        assert_eq!(r.headers["x-probe"], "1");
        assert_eq!(r.timeout, DEFAULT_TIMEOUT);
        assert_eq!(
            p.get("/app-health/web/livez").map(|l| l.path.as_str()),
            Some("/")
        );

        let e =
            AppProbes::parse(r#"{"/app-health/web/readyz": {"port": 8080, "scheme": "HTTPS"}}"#)
                .expect_err("https");
        assert!(
            e.to_string().contains("/app-health/web/readyz") && e.to_string().contains("HTTPS"),
            "{e}"
        );
        let e = AppProbes::parse(r#"{"/healthz": {"port": 8080}}"#).expect_err("outside");
        assert!(e.to_string().contains("/app-health/"), "{e}");
        assert!(AppProbes::parse("{not json").is_err());
        assert!(AppProbes::parse(r#"{"/app-health/a/b": {"port": 70000}}"#).is_err());
    }

    #[tokio::test]
    async fn a_probe_answers_with_the_apps_status_or_503_when_it_is_down() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let app = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = app.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = app.accept().await {
                let mut buf = vec![0u8; 2048];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let status = if head.starts_with("GET /healthz ")
                    && head.to_ascii_lowercase().contains("x-probe: 1")
                {
                    "204 No Content"
                } else {
                    "500 Internal Server Error"
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let json = format!(
            r#"{{"/app-health/web/readyz": {{"port": {port}, "path": "/healthz", "headers": [{{"name": "x-probe", "value": "1"}}]}}}}"#
        );
        let probes = AppProbes::parse(&json).expect("valid");
        let (status, _) = probes
            .get("/app-health/web/readyz")
            .expect("probe")
            .run()
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);

        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        let probes = AppProbes::parse(&format!(
            r#"{{"/app-health/web/livez": {{"port": {port}}}}}"#
        ))
        .expect("valid");
        let (status, why) = probes
            .get("/app-health/web/livez")
            .expect("probe")
            .run()
            .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            String::from_utf8_lossy(&why).contains("app probe failed"),
            "{why:?}"
        );
    }
}
