//! `outrigger explain A B`: what a call from service A to service B goes through, read from
//! the live control plane: whether A may call B at all, the mTLS mode and whether B's policy
//! admits A, the routes in the order they match (with the timeouts and retries each compiles
//! to, the same `to_route` the sidecars' snapshots use), the retry budget and other policy,
//! the split, and B's endpoints by version, with what A's sidecars see ejected. It ends with a
//! verdict: the call can succeed, or why it cannot.

use super::client::Client;
use super::up::metrics_text;
use super::up::table::Collector;
use outrigger_config::mesh::{Document, PolicySpec, Resource, RouteSpec, ServiceSpec};
use outrigger_config::snapshot::Route;
use serde::Deserialize;
use std::net::SocketAddr;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The calling service.
    #[arg(value_name = "SERVICE-A")]
    from: String,
    /// The called service.
    #[arg(value_name = "SERVICE-B")]
    to: String,
}

#[derive(Deserialize)]
struct Instance {
    id: String,
    service: String,
    version: String,
    endpoint: SocketAddr,
}

#[derive(Deserialize)]
struct CaStatus {
    mtls_mode: String,
    trust_domain: String,
}

#[derive(Deserialize)]
struct Sidecar {
    service: String,
    admin: Option<SocketAddr>,
    connected: bool,
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let (a, b) = (args.from.as_str(), args.to.as_str());
    let services: Vec<Resource> = client.get("/v1/services").await?;
    let routes: Vec<Resource> = client.get("/v1/routes").await?;
    let policies: Vec<Resource> = client.get("/v1/policies").await?;
    let instances: Vec<Instance> = client.get("/v1/registry/instances").await?;
    let ca: CaStatus = client.get("/v1/ca/status").await?;
    let sidecars: Vec<Sidecar> = client.get("/v1/sidecars").await?;

    let service = |name: &str| {
        services.iter().find_map(|r| match r {
            Resource::Service(d) if d.metadata.name == name => Some(d),
            _ => None,
        })
    };
    let mut blockers: Vec<String> = Vec::new();
    println!("A call from {a} to {b}");
    let (Some(caller), Some(callee)) = (service(a), service(b)) else {
        for name in [a, b].into_iter().filter(|n| service(n).is_none()) {
            println!("  × {name} is not a service of the mesh (outrigger get services)");
        }
        println!("verdict: cannot succeed");
        return Ok(ExitCode::FAILURE);
    };

    // May A call B at all: its sidecars get only the destinations in its `calls`.
    if caller.spec.calls.iter().any(|c| c == b) {
        println!("  calls:     {a} calls {b} √");
    } else {
        println!("  calls:     × {b} is not in {a}'s calls, so {a}'s sidecars know no {b}: a request gets 404 unknown-authority");
        blockers.push(format!("add {b} to {a}'s calls"));
    }

    // Who A is to B, and whether B lets it in.
    let id = |s: &str| format!("spiffe://{}/service/{s}", ca.trust_domain);
    println!("  mTLS:      {} ({} → {})", ca.mtls_mode, id(a), id(b));
    let policy: Option<&Document<PolicySpec>> = policies.iter().find_map(|r| match r {
        Resource::Policy(d) if d.spec.service == b => Some(d),
        _ => None,
    });
    match policy {
        Some(p) if !p.spec.allow.is_empty() => {
            let allowed = p.spec.allow.iter().any(|s| s == a);
            if ca.mtls_mode == "off" {
                println!(
                    "  authorisation: policy {} allows [{}], but with mTLS off there are no identities to check: anyone gets in",
                    p.metadata.name,
                    p.spec.allow.join(", ")
                );
            } else if allowed {
                println!(
                    "  authorisation: policy {} allows [{}]: {a} admitted √",
                    p.metadata.name,
                    p.spec.allow.join(", ")
                );
            } else {
                println!(
                    "  authorisation: × policy {} allows only [{}]: {b}'s sidecars answer {a} with 403 forbidden",
                    p.metadata.name,
                    p.spec.allow.join(", ")
                );
                blockers.push(format!("add {a} to policy {}'s allow", p.metadata.name));
            }
        }
        _ => println!("  authorisation: {b} has no allow list: any caller the mTLS mode admits"),
    }
    if let Some(p) = policy {
        let mut spec = serde_json::to_value(&p.spec).unwrap_or_default();
        if let Some(m) = spec.as_object_mut() {
            m.remove("service");
            m.remove("allow");
        }
        if spec.as_object().is_some_and(|m| !m.is_empty()) {
            println!("  policy {}: {spec}", p.metadata.name);
        }
    }
    if policy.and_then(|p| p.spec.retry_budget.as_ref()).is_none() {
        println!("  retry budget: the default (see README, Resilience settings)");
    }

    // The routes in the order they match, as the sidecars compile them.
    let mut own: Vec<(&str, &RouteSpec)> = routes
        .iter()
        .filter_map(|r| match r {
            Resource::Route(d) if d.spec.service == b => Some((d.metadata.name.as_str(), &d.spec)),
            _ => None,
        })
        .collect();
    own.sort_by_key(|(name, r)| (r.priority, *name));
    println!("  routes (first match wins):");
    for (i, (name, spec)) in own.iter().enumerate() {
        let route = spec.to_route(name);
        println!("    {}. {}", i + 1, describe(&route, Some(spec.priority)));
    }
    println!(
        "    {}. {}",
        own.len() + 1,
        describe(&Route::catch_all(), None)
    );

    // Where requests go.
    split(&callee.spec);
    let mine: Vec<&Instance> = instances.iter().filter(|i| i.service == b).collect();
    if mine.is_empty() {
        println!("  endpoints: × none registered: {a}'s sidecars answer 503 no-endpoints");
        blockers.push(format!("start an instance of {b}"));
    } else {
        println!("  endpoints:");
        for i in &mine {
            println!("    {} {} ({})", i.version, i.endpoint, i.id);
        }
        for w in callee.spec.split.iter().filter(|w| w.weight > 0) {
            if !mine.iter().any(|i| i.version == w.version) {
                println!(
                    "    × {} has weight {} and no instance: its share goes to the other versions",
                    w.version, w.weight
                );
            }
        }
    }
    let probe = Collector::new(Vec::new());
    let (mut seen, mut ejected) = (0, 0.0);
    for s in sidecars.iter().filter(|s| s.connected && s.service == a) {
        let Some(admin) = s.admin else { continue };
        if let Some(text) = probe.get(admin, "/metrics").await {
            seen += 1;
            ejected += metrics_text::sum(
                &String::from_utf8_lossy(&text),
                "outrigger_endpoints_ejected",
                &[("dst_service", b)],
            );
        }
    }
    if seen > 0 {
        println!("  health: {ejected} of {b}'s endpoints ejected now, as {seen} of {a}'s sidecar(s) see them");
    } else {
        println!("  health: none of {a}'s sidecars could be asked from here (their admin ports)");
    }

    if blockers.is_empty() {
        println!("verdict: the call can succeed");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("verdict: cannot succeed: {}", blockers.join("; "));
        Ok(ExitCode::FAILURE)
    }
}

fn describe(r: &Route, priority: Option<u32>) -> String {
    let mut s = r.name.clone();
    if let Some(p) = priority {
        s += &format!(" (priority {p})");
    }
    let matches = serde_json::to_string(&r.matches).unwrap_or_default();
    s += &if matches == "{}" {
        ": everything".to_string()
    } else {
        format!(": match {matches}")
    };
    s += &format!("; timeout {}", humantime::format_duration(r.timeout));
    if let Some(t) = r.per_try_timeout {
        s += &format!(", per try {}", humantime::format_duration(t));
    }
    if r.retries.attempts > 1 {
        let on = serde_json::to_string(&r.retries.on).unwrap_or_default();
        s += &format!("; up to {} attempts on {on}", r.retries.attempts);
        if r.retries.non_idempotent {
            s += " (non-idempotent too)";
        }
    } else {
        s += "; no retries";
    }
    if !r.split.is_empty() {
        let split: Vec<String> = r
            .split
            .iter()
            .map(|w| format!("{}={}", w.version, w.weight))
            .collect();
        s += &format!("; split {}", split.join(" "));
    }
    s
}

fn split(spec: &ServiceSpec) {
    if spec.split.is_empty() {
        println!("  split:     none: every version's endpoints share the traffic");
        return;
    }
    let total: u32 = spec.split.iter().map(|w| w.weight).sum();
    let parts: Vec<String> = spec
        .split
        .iter()
        .map(|w| {
            format!(
                "{} {:.0}%",
                w.version,
                f64::from(w.weight) * 100.0 / f64::from(total.max(1))
            )
        })
        .collect();
    let sticky = spec
        .sticky_header
        .as_deref()
        .map(|h| format!(" (sticky on {h})"))
        .unwrap_or_default();
    println!("  split:     {}{sticky}", parts.join(", "));
}
