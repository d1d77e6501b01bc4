//! `outrigger get services|routes|policies|sidecars|instances [NAME] [-o table|json]`.

use super::client::Client;
use super::table;
use serde_json::Value;
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum What {
    #[value(alias = "service")]
    Services,
    #[value(alias = "route")]
    Routes,
    #[value(alias = "policy")]
    Policies,
    #[value(alias = "sidecar")]
    Sidecars,
    #[value(alias = "instance")]
    Instances,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    what: What,
    /// One resource by name; for instances, a service; for sidecars, an id.
    name: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let name = args.name.as_deref();
    let items: Value = match (args.what, name) {
        (What::Services, Some(n)) => client.get(&format!("/v1/services/{n}")).await?,
        (What::Routes, Some(n)) => client.get(&format!("/v1/routes/{n}")).await?,
        (What::Policies, Some(n)) => client.get(&format!("/v1/policies/{n}")).await?,
        (What::Services, None) => client.get("/v1/services").await?,
        (What::Routes, None) => client.get("/v1/routes").await?,
        (What::Policies, None) => client.get("/v1/policies").await?,
        (What::Instances, Some(s)) => {
            client
                .get(&format!("/v1/registry/instances?service={s}"))
                .await?
        }
        (What::Instances, None) => client.get("/v1/registry/instances").await?,
        (What::Sidecars, _) => {
            let all: Vec<Value> = client.get("/v1/sidecars").await?;
            Value::Array(
                all.into_iter()
                    .filter(|s| name.is_none_or(|n| s["id"] == n))
                    .collect(),
            )
        }
    };
    if let Output::Json = args.output {
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(ExitCode::SUCCESS);
    }
    let list = match items {
        Value::Array(a) => a,
        one => vec![one],
    };
    let (header, row): (&[&str], RowFn) = match args.what {
        What::Services => (
            &["NAME", "PROTOCOL", "HOSTS", "CALLS", "SPLIT"],
            service_row,
        ),
        What::Routes => (
            &["NAME", "SERVICE", "PRIORITY", "MATCH", "TIMEOUT"],
            route_row,
        ),
        What::Policies => (&["NAME", "SERVICE"], policy_row),
        What::Sidecars => (
            &[
                "ID",
                "SERVICE",
                "VERSION",
                "ADMIN",
                "CONNECTED",
                "PUSHED",
                "ACKED",
                "LAST-NACK",
                "LAST-SEEN",
            ],
            sidecar_row,
        ),
        What::Instances => (
            &["ID", "SERVICE", "VERSION", "ENDPOINT", "LABELS"],
            instance_row,
        ),
    };
    table::print(header, &list.iter().map(row).collect::<Vec<_>>());
    Ok(ExitCode::SUCCESS)
}

/// Turns one listed item into a table row.
type RowFn = fn(&Value) -> Vec<String>;

/// A cell: strings bare, absent values as `-`, anything else as compact JSON.
fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn joined(v: Option<&Value>) -> String {
    match v.and_then(Value::as_array) {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|x| cell(Some(x)))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".into(),
    }
}

fn service_row(v: &Value) -> Vec<String> {
    let split = match v.pointer("/spec/split").and_then(Value::as_array) {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|w| format!("{}={}", cell(w.get("version")), cell(w.get("weight"))))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".into(),
    };
    vec![
        cell(v.pointer("/metadata/name")),
        v.pointer("/spec/protocol")
            .map_or_else(|| "http1".into(), |p| cell(Some(p))),
        joined(v.pointer("/spec/hosts")),
        joined(v.pointer("/spec/calls")),
        split,
    ]
}

fn route_row(v: &Value) -> Vec<String> {
    let m = v.pointer("/spec/match");
    let mut parts = Vec::new();
    if let Some(m) = m {
        if let Some(methods) = m.get("methods") {
            parts.push(joined(Some(methods)));
        }
        if let Some(p) = m.get("path_exact") {
            parts.push(format!("={}", cell(Some(p))));
        }
        if let Some(p) = m.get("path_prefix") {
            parts.push(format!("{}*", cell(Some(p))));
        }
        for h in m
            .get("headers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            parts.push(format!("{}:{}", cell(h.get("name")), cell(h.get("value"))));
        }
    }
    vec![
        cell(v.pointer("/metadata/name")),
        cell(v.pointer("/spec/service")),
        v.pointer("/spec/priority")
            .map_or_else(|| "0".into(), |p| cell(Some(p))),
        if parts.is_empty() {
            "*".into()
        } else {
            parts.join(" ")
        },
        cell(v.pointer("/spec/timeout")),
    ]
}

fn policy_row(v: &Value) -> Vec<String> {
    vec![
        cell(v.pointer("/metadata/name")),
        cell(v.pointer("/spec/service")),
    ]
}

fn sidecar_row(v: &Value) -> Vec<String> {
    let nack = match v.get("last_nack") {
        Some(n) if !n.is_null() => {
            format!("v{}: {}", cell(n.get("version")), cell(n.get("reason")))
        }
        _ => "-".into(),
    };
    vec![
        cell(v.get("id")),
        cell(v.get("service")),
        cell(v.get("version")),
        cell(v.get("admin")),
        cell(v.get("connected")),
        cell(v.get("pushed_version")),
        cell(v.get("acked_version")),
        nack,
        cell(v.get("last_seen")),
    ]
}

fn instance_row(v: &Value) -> Vec<String> {
    let labels = match v.get("labels").and_then(Value::as_object) {
        Some(l) if !l.is_empty() => l
            .iter()
            .map(|(k, x)| format!("{k}={}", cell(Some(x))))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".into(),
    };
    vec![
        cell(v.get("id")),
        cell(v.get("service")),
        cell(v.get("version")),
        cell(v.get("endpoint")),
        labels,
    ]
}
