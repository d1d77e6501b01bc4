//! The live view of the mesh: per service, what its callers' sidecars see — requests per
//! second, success, exact p50/p95/p99 from `/stats`, retries, ejections and the canary share
//! by version — read from the sidecars' admin ports and drawn as a plain text table.

use super::metrics_text::{sum, sum_by};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;

/// Where to look for one service: the admin port of a sidecar that calls it.
#[derive(Debug, Clone)]
pub struct Probe {
    pub service: String,
    pub caller_admin: SocketAddr,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    pub service: String,
    pub requests: u64,
    pub rps: f64,
    pub success_rate: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub retries: u64,
    pub ejections: u64,
    pub ejected_now: u64,
    /// Share of split decisions by version, when a split chose among more than one.
    pub versions: Vec<(String, f64)>,
}

pub struct Collector {
    client: Client<HttpConnector, Empty<Bytes>>,
    probes: Vec<Probe>,
    last: HashMap<String, (u64, tokio::time::Instant)>,
}

impl Collector {
    pub fn new(probes: Vec<Probe>) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            probes,
            last: HashMap::new(),
        }
    }

    pub async fn get(&self, admin: SocketAddr, path: &str) -> Option<Bytes> {
        let uri: http::Uri = format!("http://{admin}{path}").parse().ok()?;
        let res = tokio::time::timeout(Duration::from_secs(3), self.client.get(uri))
            .await
            .ok()?
            .ok()?;
        if !res.status().is_success() {
            return None;
        }
        Some(res.into_body().collect().await.ok()?.to_bytes())
    }

    /// One row per probed service; `rps` is over the time since the previous call.
    pub async fn collect(&mut self) -> Vec<Row> {
        let mut cache: HashMap<SocketAddr, (String, Value)> = HashMap::new();
        let mut rows = Vec::new();
        for p in self.probes.clone() {
            if let std::collections::hash_map::Entry::Vacant(slot) = cache.entry(p.caller_admin) {
                let metrics = self
                    .get(p.caller_admin, "/metrics")
                    .await
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let stats = self
                    .get(p.caller_admin, "/stats")
                    .await
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or(Value::Null);
                slot.insert((metrics, stats));
            }
            let Some((metrics, stats)) = cache.get(&p.caller_admin) else {
                continue;
            };
            let mut row = row(&p.service, metrics, stats);
            let now = tokio::time::Instant::now();
            if let Some((before, at)) = self.last.get(&p.service) {
                let secs = now.saturating_duration_since(*at).as_secs_f64();
                if secs > 0.0 {
                    row.rps = row.requests.saturating_sub(*before) as f64 / secs;
                }
            }
            self.last.insert(p.service.clone(), (row.requests, now));
            rows.push(row);
        }
        rows
    }
}

fn row(service: &str, metrics: &str, stats: &Value) -> Row {
    let dst = [("direction", "outbound"), ("dst_service", service)];
    let by_status = sum_by(metrics, "outrigger_requests_total", &dst, "status_code");
    let total: f64 = by_status.iter().map(|(_, n)| n).sum();
    let failed: f64 = by_status
        .iter()
        .filter(|(s, _)| s.starts_with('5'))
        .map(|(_, n)| n)
        .sum();
    // The canary share as the split decided it (first attempts), not where retries ended up.
    let versions = sum_by(metrics, "outrigger_split_decisions_total", &dst, "version");
    let versioned: f64 = versions
        .iter()
        .filter(|(v, _)| !v.is_empty())
        .map(|(_, n)| n)
        .sum();
    let mut row = Row {
        service: service.to_string(),
        requests: total as u64,
        success_rate: if total > 0.0 {
            1.0 - failed / total
        } else {
            1.0
        },
        retries: sum(
            metrics,
            "outrigger_retries_total",
            &[("dst_service", service), ("outcome", "retried")],
        ) as u64,
        ejections: sum(
            metrics,
            "outrigger_ejections_total",
            &[("dst_service", service)],
        ) as u64,
        ejected_now: sum(
            metrics,
            "outrigger_endpoints_ejected",
            &[("dst_service", service)],
        ) as u64,
        versions: versions
            .into_iter()
            .filter(|(v, _)| !v.is_empty())
            .map(|(v, n)| (v, if versioned > 0.0 { n / versioned } else { 0.0 }))
            .collect(),
        ..Row::default()
    };
    if row.versions.len() < 2 {
        row.versions.clear();
    }
    let found = stats["destinations"].as_array().and_then(|rows| {
        rows.iter()
            .find(|r| r["direction"] == "outbound" && r["destination"] == service)
    });
    if let Some(s) = found {
        row.p50_ms = s["p50_ms"].as_f64().unwrap_or(0.0);
        row.p95_ms = s["p95_ms"].as_f64().unwrap_or(0.0);
        row.p99_ms = s["p99_ms"].as_f64().unwrap_or(0.0);
    }
    row
}

pub fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>10}  CANARY",
        "SERVICE", "REQ/S", "SUCCESS", "P50 ms", "P95 ms", "P99 ms", "RETRIES", "EJECTIONS",
    );
    for r in rows {
        let canary = r
            .versions
            .iter()
            .map(|(v, s)| format!("{v} {:.1}%", s * 100.0))
            .collect::<Vec<_>>()
            .join(" / ");
        let _ = writeln!(
            out,
            "{:<10} {:>8.1} {:>8.2}% {:>9.1} {:>9.1} {:>9.1} {:>8} {:>10}  {}",
            r.service,
            r.rps,
            r.success_rate * 100.0,
            r.p50_ms,
            r.p95_ms,
            r.p99_ms,
            r.retries,
            r.ejections,
            if canary.is_empty() {
                "-".to_string()
            } else {
                canary
            }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_reads_what_the_caller_saw() {
        let metrics = "outrigger_requests_total{direction=\"outbound\",dst_service=\"payment\",dst_version=\"v1\",status_code=\"200\"} 88\n\
            outrigger_requests_total{direction=\"outbound\",dst_service=\"payment\",dst_version=\"v2\",status_code=\"200\"} 10\n\
            outrigger_requests_total{direction=\"outbound\",dst_service=\"payment\",dst_version=\"v2\",status_code=\"503\"} 2\n\
            outrigger_retries_total{direction=\"outbound\",dst_service=\"payment\",outcome=\"retried\",route=\"charge\",service=\"order\"} 7\n\
            outrigger_split_decisions_total{direction=\"outbound\",dst_service=\"payment\",route=\"charge\",service=\"order\",version=\"v1\"} 88\n\
            outrigger_split_decisions_total{direction=\"outbound\",dst_service=\"payment\",route=\"charge\",service=\"order\",version=\"v2\"} 12\n";
        let stats: Value = serde_json::json!({"destinations": [
            {"direction": "outbound", "destination": "payment", "p50_ms": 3.0, "p95_ms": 9.0, "p99_ms": 20.0, "count": 100}
        ]});
        let r = row("payment", metrics, &stats);
        assert_eq!(r.requests, 100);
        assert!((r.success_rate - 0.98).abs() < 1e-9);
        assert_eq!(r.retries, 7);
        assert_eq!(r.p99_ms, 20.0);
        assert_eq!(
            r.versions,
            vec![("v1".to_string(), 0.88), ("v2".to_string(), 0.12)]
        );
        let text = render(&[r]);
        assert!(text.contains("v2 12.0%"), "{text}");
        assert!(text.lines().count() == 2);
    }
}
