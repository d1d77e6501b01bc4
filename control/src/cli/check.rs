//! `outrigger check`, in the spirit of `linkerd check`: is the mesh healthy? Each check prints
//! a pass or fail line, a failure its reason and a hint; the exit status is 1 when any failed.
//!
//! - the control plane answers and its certificate chains to the trust anchors;
//! - the CA's signing root is valid, and for how long;
//! - every sidecar is in sync (acknowledged the last snapshot pushed) and ready, which
//!   includes a valid certificate; a sidecar whose app does not answer is named too;
//! - every service others `call` has registered endpoints;
//! - no split gives weight to a version with no instance;
//! - the clocks agree (certificates depend on it).

use super::client::Client;
use super::up::table::Collector;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Fail the CA check when the signing root has less than this left.
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = humantime::parse_duration)]
    pub ca_warning: Duration,
    /// Fail the clock check above this skew.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub max_skew: Duration,
}

/// One check's outcome.
struct Outcome {
    name: String,
    problems: Vec<String>,
    hint: &'static str,
    detail: String,
}

impl Outcome {
    fn print(&self) -> bool {
        if self.problems.is_empty() {
            println!("√ {}{}", self.name, paren(&self.detail));
            return true;
        }
        println!("× {}{}", self.name, paren(&self.detail));
        for p in &self.problems {
            println!("    {p}");
        }
        println!("    hint: {}", self.hint);
        false
    }
}

fn paren(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(" ({s})")
    }
}

#[derive(Deserialize)]
struct Root {
    id: String,
    not_after: String,
    active: bool,
}

#[derive(Deserialize)]
struct Sidecar {
    id: String,
    service: String,
    admin: Option<SocketAddr>,
    connected: bool,
    acked_version: Option<u64>,
    pushed_version: Option<u64>,
}

#[derive(Deserialize)]
struct Instance {
    service: String,
    version: String,
}

#[derive(Deserialize)]
struct Service {
    metadata: Meta,
    #[serde(default)]
    spec: ServiceSpec,
}

#[derive(Deserialize)]
struct Meta {
    name: String,
}

#[derive(Deserialize, Default)]
struct ServiceSpec {
    #[serde(default)]
    calls: Vec<String>,
    #[serde(default)]
    split: Vec<Weighted>,
}

#[derive(Deserialize)]
struct Weighted {
    version: String,
    weight: u32,
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    println!("outrigger check: {}", client.url());
    let mut outcomes = Vec::new();
    // The first check gates the rest: without the control plane there is nothing to read.
    let sent = SystemTime::now();
    let reply = client.send(http::Method::GET, "/readyz", None).await;
    let received = SystemTime::now();
    let reachable = match &reply {
        Ok(r) if r.status.is_success() => Outcome {
            name: "the control plane answers and its certificate is trusted".into(),
            problems: vec![],
            hint: "",
            detail: String::new(),
        },
        Ok(r) => Outcome {
            name: "the control plane answers and its certificate is trusted".into(),
            problems: vec![format!("/readyz answered {}", r.status)],
            hint: "it is starting or shutting down; see its log",
            detail: String::new(),
        },
        Err(e) => Outcome {
            name: "the control plane answers and its certificate is trusted".into(),
            problems: vec![format!("{e:#}")],
            hint: if format!("{e:#}").contains("certificate") {
                "give --trust-anchors the control plane's trust bundle (<data-dir>/trust-bundle.pem), and a URL whose host its certificate names (outrigger-control --server-name)"
            } else {
                "is it running, and is --control-plane (or OUTRIGGER_CONTROL_PLANE) its address?"
            },
            detail: String::new(),
        },
    };
    let ok = reachable.print();
    if !ok {
        println!("Status check results are ×: the control plane is needed for the rest");
        return Ok(ExitCode::FAILURE);
    }
    if let Ok(r) = &reply {
        outcomes.push(clock(r.date, sent, received, args.max_skew));
    }
    outcomes.push(ca(client, args.ca_warning).await);
    let read = (
        client.get::<Vec<Sidecar>>("/v1/sidecars").await,
        client.get::<Vec<Instance>>("/v1/registry/instances").await,
        client.get::<Vec<Service>>("/v1/services").await,
    );
    match read {
        (Ok(sidecars), Ok(instances), Ok(services)) => {
            outcomes.push(in_sync(&sidecars));
            outcomes.push(ready(&sidecars).await);
            outcomes.push(endpoints(&services, &instances));
            outcomes.push(splits(&services, &instances));
        }
        (a, b, c) => {
            let errors = [a.err(), b.err(), c.err()];
            outcomes.push(Outcome {
                name: "the mesh can be read (sidecars, registry, services)".into(),
                problems: errors.iter().flatten().map(|e| format!("{e:#}")).collect(),
                hint: "give a reader or admin token: --token-file FILE or OUTRIGGER_TOKEN",
                detail: String::new(),
            });
        }
    }
    let failed = outcomes.iter().filter(|o| !o.print()).count();
    if failed > 0 {
        println!("Status check results are × ({failed} failed)");
        return Ok(ExitCode::FAILURE);
    }
    println!("Status check results are √");
    Ok(ExitCode::SUCCESS)
}

fn clock(
    date: Option<SystemTime>,
    sent: SystemTime,
    received: SystemTime,
    max: Duration,
) -> Outcome {
    let mut o = Outcome {
        name: "this clock agrees with the control plane's".into(),
        problems: vec![],
        hint: "sync the clocks (NTP): certificates are checked against them, so a skewed clock sees them as not yet valid or expired",
        detail: String::new(),
    };
    let Some(theirs) = date else {
        o.problems
            .push("the control plane sent no Date header".into());
        return o;
    };
    // The Date header has whole seconds: the skew is known to within one, plus the round trip.
    let mid = sent + received.duration_since(sent).unwrap_or_default() / 2;
    let skew = match mid.duration_since(theirs) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    let slack = Duration::from_secs(1) + received.duration_since(sent).unwrap_or_default();
    let skew = skew.saturating_sub(slack);
    o.detail = format!("skew under {}s", (skew + Duration::from_secs(1)).as_secs());
    if skew > max {
        o.problems.push(format!(
            "the clocks differ by about {}s (more than {}s)",
            skew.as_secs(),
            max.as_secs()
        ));
    }
    o
}

async fn ca(client: &Client, warning: Duration) -> Outcome {
    let mut o = Outcome {
        name: "the CA's signing root is valid".into(),
        problems: vec![],
        hint: "rotate the root before it expires: outrigger ca rotate (sidecars trust the new one before it signs)",
        detail: String::new(),
    };
    let roots: Vec<Root> = match client.get("/v1/ca/roots").await {
        Ok(r) => r,
        Err(e) => {
            o.problems.push(format!("{e:#}"));
            o.hint = "GET /v1/ca/roots needs a reader or admin token (--token-file)";
            return o;
        }
    };
    let Some(active) = roots.iter().find(|r| r.active) else {
        o.problems.push("no active root".into());
        return o;
    };
    let Ok(until) = humantime::parse_rfc3339(&active.not_after) else {
        o.problems
            .push(format!("unreadable expiry {:?}", active.not_after));
        return o;
    };
    match until.duration_since(SystemTime::now()) {
        Ok(left) => {
            let days = left.as_secs() / 86_400;
            o.detail = format!(
                "root {} until {}, {days} days left",
                short(&active.id),
                active.not_after
            );
            if left < warning {
                o.problems.push(format!(
                    "it expires in {days} days, under the {} days asked for",
                    warning.as_secs() / 86_400
                ));
            }
        }
        Err(_) => o.problems.push(format!(
            "root {} expired at {}",
            short(&active.id),
            active.not_after
        )),
    }
    o
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn in_sync(sidecars: &[Sidecar]) -> Outcome {
    let mut o = Outcome {
        name: "every sidecar is connected and in sync".into(),
        problems: vec![],
        hint: "a sidecar behind has refused a snapshot (outrigger get sidecars shows its NACK) or lost its stream; see its log",
        detail: format!("{} sidecar(s)", sidecars.len()),
    };
    for s in sidecars {
        if !s.connected {
            o.problems
                .push(format!("{} ({}): not connected", s.id, s.service));
        } else if s.acked_version != s.pushed_version {
            o.problems.push(format!(
                "{} ({}): acknowledged {}, pushed {}",
                s.id,
                s.service,
                s.acked_version.map_or("none".into(), |v| v.to_string()),
                s.pushed_version.map_or("none".into(), |v| v.to_string())
            ));
        }
    }
    o
}

/// Each connected sidecar's own `/ready`: a valid certificate, a snapshot, an app that answers.
async fn ready(sidecars: &[Sidecar]) -> Outcome {
    let mut o = Outcome {
        name: "every sidecar is ready, with a valid certificate, and its app answers".into(),
        problems: vec![],
        hint: "the reason is the sidecar's own /ready; fix what it names (a bootstrap token, the CA, the app)",
        detail: String::new(),
    };
    let probe = Collector::new(Vec::new());
    let (mut asked, mut unreachable) = (0, 0);
    for s in sidecars.iter().filter(|s| s.connected) {
        let Some(admin) = s.admin else { continue };
        asked += 1;
        match probe.get_any(admin, "/ready").await {
            None => unreachable += 1,
            Some((status, body)) => {
                let body = String::from_utf8_lossy(&body);
                let said = body.trim().replace('\n', "; ");
                if status != 200 || said.contains("warning:") {
                    o.problems.push(format!("{} ({}): {said}", s.id, s.service));
                }
            }
        }
    }
    o.detail = format!("{asked} asked");
    if unreachable > 0 {
        o.detail += &format!(", {unreachable} admin port(s) not reachable from here, not checked");
    }
    o
}

fn endpoints(services: &[Service], instances: &[Instance]) -> Outcome {
    let mut o = Outcome {
        name: "every service that others call has endpoints".into(),
        problems: vec![],
        hint: "start an instance of it (its sidecar registers it once ready), or take it out of the callers' calls",
        detail: String::new(),
    };
    let live: BTreeSet<&str> = instances.iter().map(|i| i.service.as_str()).collect();
    let mut callers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for s in services {
        for c in &s.spec.calls {
            callers.entry(c).or_default().push(&s.metadata.name);
        }
    }
    o.detail = format!("{} called service(s)", callers.len());
    for (callee, by) in callers {
        if !live.contains(callee) {
            o.problems.push(format!(
                "{callee} has no registered instance; called by {}",
                by.join(", ")
            ));
        }
    }
    o
}

fn splits(services: &[Service], instances: &[Instance]) -> Outcome {
    let mut o = Outcome {
        name: "no split gives weight to a version with no instance".into(),
        problems: vec![],
        hint: "its share goes to the other versions: start the version, or set its weight to 0 (outrigger canary SERVICE VERSION=0)",
        detail: String::new(),
    };
    for s in services {
        for w in s.spec.split.iter().filter(|w| w.weight > 0) {
            let here = instances
                .iter()
                .any(|i| i.service == s.metadata.name && i.version == w.version);
            if !here {
                o.problems.push(format!(
                    "{}: {} has weight {} and no instance",
                    s.metadata.name, w.version, w.weight
                ));
            }
        }
    }
    o
}
