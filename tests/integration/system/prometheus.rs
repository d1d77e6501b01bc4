//! The Prometheus step of the shared system test (`super`): a real Prometheus scrapes the
//! mesh, and every Grafana dashboard query has data.
use outrigger_tests::prometheus::Prometheus;
use outrigger_tests::up::Up;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;
use tokio::time::Instant;

/// The service the detail dashboard's `$service` is set to: it has routes, retries, a canary
/// split, ejection settings and three instances, so every panel has something to show.
const SERVICE: &str = "payment";
/// What `up` runs: seven shop instances (payment three times) and the edge, each with its
/// sidecar, and the control plane.
const SIDECAR_APPS: [&str; 8] = [
    "catalog",
    "inventory",
    "order",
    "payment",
    "payment",
    "payment",
    "storefront",
    "user",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One PromQL expression of a dashboard and where it comes from.
struct Query {
    dashboard: String,
    panel: String,
    expr: String,
}

/// Every PromQL expression in a dashboard: each panel's `targets[].expr`, rows' nested panels
/// included, and the `query` variables.
fn expressions(name: &str, dashboard: &Value) -> Vec<Query> {
    fn walk(name: &str, panels: &Value, out: &mut Vec<Query>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?");
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push(Query {
                        dashboard: name.to_string(),
                        panel: format!("{title} ({})", t["refId"].as_str().unwrap_or("?")),
                        expr: expr.to_string(),
                    });
                }
            }
            walk(name, &p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(name, &dashboard["panels"], &mut out);
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"].as_str().or(v["query"].as_str());
        out.push(Query {
            dashboard: name.to_string(),
            panel: format!("variable ${}", v["name"].as_str().unwrap_or("?")),
            expr: q.expect("a query variable has a query").to_string(),
        });
    }
    out
}

/// What Grafana would send: template variables replaced by concrete values, and its
/// `label_values(metric, label)` variable function as the PromQL that lists the same values.
fn concrete(expr: &str) -> String {
    let e = expr.trim();
    if let Some(args) = e
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let (metric, label) = args.rsplit_once(',').expect("label_values(metric, label)");
        return format!("count by ({}) ({})", label.trim(), metric.trim());
    }
    let mut e = e.to_string();
    for (var, value) in [
        ("${__rate_interval}", "30s"),
        ("$__rate_interval", "30s"),
        ("${__interval}", "5s"),
        ("$__interval", "5s"),
        ("${__range}", "5m"),
        ("$__range", "5m"),
        ("${service}", SERVICE),
        ("$service", SERVICE),
    ] {
        e = e.replace(var, value);
    }
    assert!(!e.contains('$'), "unknown template variable in {expr}");
    e
}

/// The dashboard contract: importable JSON for a recent Grafana, a Prometheus datasource
/// variable, and every panel and target on that variable.
fn check_structure(name: &str, d: &Value) {
    assert!(
        d["schemaVersion"].as_u64().unwrap_or(0) >= 36,
        "{name}: schemaVersion"
    );
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "{name}");
    assert!(d["uid"].as_str().is_some_and(|t| !t.is_empty()), "{name}");
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "{name}: no Prometheus datasource variable"
    );
    let ds = serde_json::json!({"type": "prometheus", "uid": "${datasource}"});
    fn panels(p: &Value, out: &mut Vec<Value>) {
        for x in p.as_array().into_iter().flatten() {
            out.push(x.clone());
            panels(&x["panels"], out);
        }
    }
    let mut all = Vec::new();
    panels(&d["panels"], &mut all);
    assert!(all.len() > 5, "{name}: only {} panels", all.len());
    for p in all.iter().filter(|p| p["type"] != "row") {
        let title = &p["title"];
        assert_eq!(p["datasource"], ds, "{name}: panel {title}");
        let targets = p["targets"].as_array().expect("panel targets");
        assert!(!targets.is_empty(), "{name}: panel {title} has no query");
        for t in targets {
            assert_eq!(t["datasource"], ds, "{name}: panel {title} target");
        }
    }
}

/// A real Prometheus (Debian's package) that runs `deploy/prometheus/prometheus.yml` as
/// shipped (but for a 1 s scrape interval), in a directory of its own whose `targets/` is
/// where `up --prometheus-targets` must write. Started before `up`.
pub(super) struct Scraper {
    pub prom: Prometheus,
    dir: TempDir,
}

impl Scraper {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let shipped = std::fs::read_to_string(repo().join("deploy/prometheus/prometheus.yml"))
            .expect("deploy/prometheus/prometheus.yml");
        // The shipped config scrapes every 15 s; this copy scrapes every second so that rates
        // have samples within seconds. Nothing else changes.
        let config = shipped.replace("scrape_interval: 15s", "scrape_interval: 1s");
        assert_ne!(config, shipped, "the scrape interval to shorten");
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write config");
        // The targets directory exists before Prometheus starts, so its watch catches `up`'s
        // files.
        std::fs::create_dir_all(dir.path().join("targets")).expect("targets dir");
        let prom = Prometheus::start(&dir.path().join("prometheus.yml"), dir.path()).await;
        Self { prom, dir }
    }

    /// `up --prometheus-targets` for this Prometheus.
    pub fn targets(&self) -> PathBuf {
        self.dir.path().join("targets")
    }
}

/// Prometheus for real, and the Grafana dashboards proven against it (issue 6, points 4 and 5).
/// One `outrigger up` run with traffic, scraped by a real Prometheus (Debian's package) that
/// runs `deploy/prometheus/prometheus.yml` as shipped (but for a 1 s scrape interval), with the
/// targets `up --prometheus-targets` writes. Every sidecar and the control plane must be a
/// healthy target; then every PromQL expression in `deploy/grafana/*.json` (panel targets,
/// nested row panels, and the template variable queries) runs against that Prometheus and
/// must answer with data.
///
/// `up` runs with `--prometheus-targets` [`Scraper::targets`]; that it takes them away when it
/// stops is [`up_takes_its_targets_away_when_it_stops`].
pub(super) async fn prometheus_scrapes_the_mesh_and_every_dashboard_query_has_data(
    up: &mut Up,
    scraper: &Scraper,
) {
    let prom = &scraper.prom;
    // Point 4: every sidecar and the control plane is a target, and every target is up.
    let expected = SIDECAR_APPS.len() + 1;
    let deadline = Instant::now() + Duration::from_secs(180);
    let targets = loop {
        up.assert_running();
        let t = prom.active_targets().await;
        if t.len() == expected && t.iter().all(|t| t["health"] == "up") {
            break t;
        }
        if Instant::now() > deadline {
            panic!(
                "expected {expected} targets, all up; Prometheus has:\n{}\nup's log:\n{}",
                serde_json::to_string_pretty(&t).unwrap_or_default(),
                up.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let label = |t: &Value, k: &str| t["labels"][k].as_str().unwrap_or("").to_string();
    let mut apps: Vec<String> = targets
        .iter()
        .filter(|t| label(t, "job") == "outrigger-sidecars")
        .map(|t| label(t, "app"))
        .collect();
    apps.sort();
    assert_eq!(apps, SIDECAR_APPS, "sidecar targets");
    let control: Vec<&Value> = targets
        .iter()
        .filter(|t| label(t, "job") == "outrigger-control")
        .collect();
    assert_eq!(control.len(), 1, "control plane targets: {targets:?}");
    for t in &targets {
        assert!(
            t["scrapeUrl"]
                .as_str()
                .is_some_and(|u| u.ends_with("/metrics")),
            "{t}"
        );
    }

    // Traffic has reached every service and Prometheus has more than one sample of it.
    let flowing = r#"count(count by (dst_service) (increase(outrigger_requests_total{direction="outbound", dst_service=~"user|catalog|order|inventory|payment"}[1m]) > 0))"#;
    let deadline = Instant::now() + Duration::from_secs(120);
    while prom.scalar(flowing).await != Some(5.0) {
        up.assert_running();
        assert!(
            Instant::now() < deadline,
            "no traffic to all five services in Prometheus; up's log:\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Point 5: the dashboards.
    let mut queries = Vec::new();
    for name in ["mesh-overview.json", "service-detail.json"] {
        let path = repo().join("deploy/grafana").join(name);
        let d: Value = serde_json::from_slice(&std::fs::read(&path).expect("dashboard file"))
            .unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
        check_structure(name, &d);
        queries.extend(expressions(name, &d));
    }
    assert!(queries.len() >= 20, "only {} expressions", queries.len());
    let detail_var = queries
        .iter()
        .find(|q| q.panel == "variable $service")
        .expect("service-detail has a $service variable");
    assert_eq!(
        detail_var.expr,
        "label_values(outrigger_requests_total, dst_service)"
    );

    // Each expression must evaluate without error (at once: a bad query never heals) and return
    // data. Rates need two samples in their range, so an empty answer is retried for a while;
    // what is still empty at the deadline fails.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut pending: Vec<&Query> = queries.iter().collect();
    loop {
        let mut empty = Vec::new();
        for q in pending {
            let expr = concrete(&q.expr);
            match prom.query(&expr).await {
                Err(e) => panic!(
                    "{} / {}: Prometheus refused the expression: {e}\n{expr}",
                    q.dashboard, q.panel
                ),
                Ok(r) if r.is_empty() => empty.push(q),
                Ok(r) => {
                    if q.panel == "variable $service" {
                        assert!(
                            r.iter().any(|s| s["metric"]["dst_service"] == SERVICE),
                            "$service offers no {SERVICE}: {r:?}"
                        );
                    }
                }
            }
        }
        if empty.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let list: Vec<String> = empty
                .iter()
                .map(|q| format!("{} / {}:\n  {}", q.dashboard, q.panel, concrete(&q.expr)))
                .collect();
            panic!("expressions with no data:\n{}", list.join("\n"));
        }
        up.assert_running();
        pending = empty;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `up` stops cleanly on SIGTERM (its exit status is checked by `super`) and takes its targets
/// away with it.
pub(super) fn up_takes_its_targets_away_when_it_stops(scraper: &Scraper) {
    let left: Vec<_> = std::fs::read_dir(scraper.targets())
        .expect("targets dir")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert!(left.is_empty(), "target files left behind: {left:?}");
}
