//! The live view of the mesh: per service, what its callers' sidecars see — requests per
//! second, success, exact p50/p95/p99 from `/stats`, retries, ejections and the canary share
//! by version — read from the sidecars' admin ports and drawn as a plain text table. `up`
//! names each service's caller; `top` finds the callers in what every sidecar reports.

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
    /// Share of responses by the version that served them, when more than one did: what the
    /// CANARY column shows.
    pub versions: Vec<(String, f64)>,
    /// Share of the split's decisions by version (first attempts): what the weights asked for,
    /// before retries, ejections and missing versions moved traffic.
    pub decided: Vec<(String, f64)>,
}

/// What one sidecar's admin port said at one moment; a part it did not answer is empty.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub metrics: String,
    pub stats: Value,
}

impl Scrape {
    /// The services this sidecar has called: `dst_service` of its outbound requests.
    pub fn called(&self) -> Vec<String> {
        sum_by(
            &self.metrics,
            "outrigger_requests_total",
            &[("direction", "outbound")],
            "dst_service",
        )
        .into_iter()
        .map(|(s, _)| s)
        .collect()
    }
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

    /// `GET path` on a sidecar's admin: its status and body, whatever the status; `None` when
    /// it does not answer within 3 s.
    pub async fn get_any(&self, admin: SocketAddr, path: &str) -> Option<(u16, Bytes)> {
        let uri: http::Uri = format!("http://{admin}{path}").parse().ok()?;
        let res = tokio::time::timeout(Duration::from_secs(3), self.client.get(uri))
            .await
            .ok()?
            .ok()?;
        let status = res.status().as_u16();
        Some((status, res.into_body().collect().await.ok()?.to_bytes()))
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

    /// Reads a sidecar's `/metrics` and `/stats`.
    pub async fn scrape(&self, admin: SocketAddr) -> Scrape {
        let metrics = self
            .get(admin, "/metrics")
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let stats = self
            .get(admin, "/stats")
            .await
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        Scrape { metrics, stats }
    }

    /// One row per probed service; `rps` is over the time since the previous call.
    pub async fn collect(&mut self) -> Vec<Row> {
        let mut cache: HashMap<SocketAddr, Scrape> = HashMap::new();
        let mut rows = Vec::new();
        for p in self.probes.clone() {
            if let std::collections::hash_map::Entry::Vacant(slot) = cache.entry(p.caller_admin) {
                slot.insert(self.scrape(p.caller_admin).await);
            }
            let Some(scrape) = cache.get(&p.caller_admin) else {
                continue;
            };
            rows.push(self.row(&p.service, &[scrape]));
        }
        rows
    }

    /// `service` as all these callers saw it; `rps` is over the time since the previous row
    /// for the same service.
    pub fn row(&mut self, service: &str, callers: &[&Scrape]) -> Row {
        let mut row = row(service, callers);
        let now = tokio::time::Instant::now();
        if let Some((before, at)) = self.last.get(service) {
            let secs = now.saturating_duration_since(*at).as_secs_f64();
            if secs > 0.0 {
                row.rps = row.requests.saturating_sub(*before) as f64 / secs;
            }
        }
        self.last.insert(service.to_string(), (row.requests, now));
        row
    }
}

/// What one caller's sidecar saw of one service.
struct Seen {
    total: f64,
    failed: f64,
    retries: f64,
    ejections: f64,
    ejected_now: f64,
    versions: Vec<(String, f64)>,
    decided: Vec<(String, f64)>,
    /// The `/stats` row: requests in the window and their percentiles.
    window: Option<(f64, [f64; 3])>,
}

fn seen(service: &str, scrape: &Scrape) -> Seen {
    let metrics = scrape.metrics.as_str();
    let dst = [("direction", "outbound"), ("dst_service", service)];
    let by_status = sum_by(metrics, "outrigger_requests_total", &dst, "status_code");
    let window = scrape.stats["destinations"]
        .as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|r| r["direction"] == "outbound" && r["destination"] == service)
        })
        .map(|s| {
            let ms = |k: &str| s[k].as_f64().unwrap_or(0.0);
            (ms("count"), [ms("p50_ms"), ms("p95_ms"), ms("p99_ms")])
        });
    Seen {
        total: by_status.iter().map(|(_, n)| n).sum(),
        failed: by_status
            .iter()
            .filter(|(s, _)| s.starts_with('5'))
            .map(|(_, n)| n)
            .sum(),
        retries: sum(
            metrics,
            "outrigger_retries_total",
            &[("dst_service", service), ("outcome", "retried")],
        ),
        ejections: sum(
            metrics,
            "outrigger_ejections_total",
            &[("dst_service", service)],
        ),
        ejected_now: sum(
            metrics,
            "outrigger_endpoints_ejected",
            &[("dst_service", service)],
        ),
        // The share each version actually served (the responses its endpoints gave, retries
        // included), not what the split decided: a split naming a version with no instances
        // falls back to the others, and the table must show where traffic went.
        versions: sum_by(metrics, "outrigger_requests_total", &dst, "dst_version")
            .into_iter()
            .filter(|(v, _)| !v.is_empty())
            .collect(),
        decided: sum_by(metrics, "outrigger_split_decisions_total", &dst, "version")
            .into_iter()
            .filter(|(v, _)| !v.is_empty())
            .collect(),
        window,
    }
}

/// Each version's share of what the callers counted, added up across callers.
fn shares<'a>(per_caller: impl Iterator<Item = &'a Vec<(String, f64)>>) -> Vec<(String, f64)> {
    let mut versions: Vec<(String, f64)> = Vec::new();
    for (v, n) in per_caller.flatten() {
        match versions.iter_mut().find(|(k, _)| k == v) {
            Some((_, total)) => *total += n,
            None => versions.push((v.clone(), *n)),
        }
    }
    versions.sort_by(|a, b| a.0.cmp(&b.0));
    let all: f64 = versions.iter().map(|(_, n)| n).sum();
    let shares: Vec<(String, f64)> = versions
        .into_iter()
        .map(|(v, n)| (v, if all > 0.0 { n / all } else { 0.0 }))
        .collect();
    if shares.len() < 2 {
        return Vec::new();
    }
    shares
}

/// Counters add up across callers. Exact percentiles do not: without the histograms the only
/// exact figures are each caller's own, so the row shows those of the caller that sent most
/// requests in the window (what most of the traffic saw); with one caller, as in `up`, that is
/// simply its view.
fn row(service: &str, callers: &[&Scrape]) -> Row {
    let seen: Vec<Seen> = callers.iter().map(|c| seen(service, c)).collect();
    let total: f64 = seen.iter().map(|s| s.total).sum();
    let failed: f64 = seen.iter().map(|s| s.failed).sum();
    let mut row = Row {
        service: service.to_string(),
        requests: total as u64,
        success_rate: if total > 0.0 {
            1.0 - failed / total
        } else {
            1.0
        },
        retries: seen.iter().map(|s| s.retries).sum::<f64>() as u64,
        ejections: seen.iter().map(|s| s.ejections).sum::<f64>() as u64,
        // Each caller ejects on its own: this counts (caller, endpoint) pairs out right now.
        ejected_now: seen.iter().map(|s| s.ejected_now).sum::<f64>() as u64,
        versions: shares(seen.iter().map(|s| &s.versions)),
        decided: shares(seen.iter().map(|s| &s.decided)),
        ..Row::default()
    };
    let busiest = seen
        .iter()
        .filter_map(|s| s.window)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((_, [p50, p95, p99])) = busiest {
        (row.p50_ms, row.p95_ms, row.p99_ms) = (p50, p95, p99);
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
        let order = Scrape {
            metrics: metrics.to_string(),
            stats,
        };
        assert_eq!(order.called(), ["payment"]);
        let r = row("payment", &[&order]);
        assert_eq!(r.requests, 100);
        assert!((r.success_rate - 0.98).abs() < 1e-9);
        assert_eq!(r.retries, 7);
        assert_eq!(r.p99_ms, 20.0);
        assert_eq!(
            r.versions,
            vec![("v1".to_string(), 0.88), ("v2".to_string(), 0.12)]
        );
        assert_eq!(
            r.decided,
            vec![("v1".to_string(), 0.88), ("v2".to_string(), 0.12)]
        );
        let text = render(&[r]);
        assert!(text.contains("v2 12.0%"), "{text}");
        assert!(text.lines().count() == 2);
    }

    fn caller(ok: u64, failed: u64, v2: u64, window: u64, p99: f64) -> Scrape {
        Scrape {
            metrics: format!(
                "outrigger_requests_total{{direction=\"outbound\",dst_service=\"catalog\",dst_version=\"v1\",status_code=\"200\"}} {}\n\
                 outrigger_requests_total{{direction=\"outbound\",dst_service=\"catalog\",dst_version=\"v2\",status_code=\"200\"}} {v2}\n\
                 outrigger_requests_total{{direction=\"outbound\",dst_service=\"catalog\",dst_version=\"v1\",status_code=\"503\"}} {failed}\n\
                 outrigger_retries_total{{dst_service=\"catalog\",outcome=\"retried\"}} 1\n\
                 outrigger_split_decisions_total{{direction=\"outbound\",dst_service=\"catalog\",version=\"v1\"}} {}\n\
                 outrigger_split_decisions_total{{direction=\"outbound\",dst_service=\"catalog\",version=\"v2\"}} {v2}\n",
                ok - v2,
                ok + failed - v2
            ),
            stats: serde_json::json!({"destinations": [
                {"direction": "outbound", "destination": "catalog", "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": p99, "count": window}
            ]}),
        }
    }

    #[test]
    fn several_callers_add_up_and_the_busiest_gives_the_percentiles() {
        let (edge, order) = (caller(90, 10, 10, 500, 7.0), caller(100, 0, 30, 40, 99.0));
        let r = row("catalog", &[&edge, &order]);
        assert_eq!(r.requests, 200);
        assert!((r.success_rate - 0.95).abs() < 1e-9, "{r:?}");
        assert_eq!(r.retries, 2);
        assert_eq!(r.p99_ms, 7.0, "the edge sent most requests in the window");
        assert_eq!(
            r.versions,
            vec![("v1".to_string(), 0.8), ("v2".to_string(), 0.2)]
        );
        let none = row("catalog", &[]);
        assert_eq!((none.requests, none.p99_ms), (0, 0.0));
    }
}
