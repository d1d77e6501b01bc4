//! `outrigger ca status [-o json]`: which root signs, which one is pending, and which sidecars
//! hold it up — a pending root becomes the signer only once every connected sidecar ACKed a
//! snapshot whose trust bundle holds it, so the sidecars that do not trust it yet lag.

use super::super::client::Client;
use super::super::table;
use serde::{Deserialize, Serialize};
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
}

/// `GET /v1/ca/status`.
#[derive(Debug, Deserialize, Serialize)]
struct Status {
    active: String,
    #[serde(default)]
    pending: Option<String>,
    #[serde(default)]
    sidecars: Vec<Sidecar>,
    #[serde(default)]
    lagging: Vec<String>,
}

#[derive(Debug, Deserialize, Serialize)]
struct Sidecar {
    id: String,
    service: String,
    #[serde(default)]
    connected: bool,
    #[serde(default)]
    acked_version: Option<u64>,
    #[serde(default)]
    trusts_pending: bool,
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let status: Status = client.get("/v1/ca/status").await?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        Output::Table => print!("{}", text(&status)),
    }
    Ok(ExitCode::SUCCESS)
}

fn text(s: &Status) -> String {
    let mut out = format!("active root:  {}\n", s.active);
    match &s.pending {
        Some(p) => out.push_str(&format!("pending root: {p}\n")),
        None => out.push_str("pending root: none\n"),
    }
    let rows: Vec<Vec<String>> = s
        .sidecars
        .iter()
        .map(|c| {
            let trusts = match (&s.pending, c.trusts_pending) {
                (None, _) => "-",
                (Some(_), true) => "yes",
                (Some(_), false) => "no (lags)",
            };
            vec![
                c.id.clone(),
                c.service.clone(),
                if c.connected { "yes" } else { "no" }.to_string(),
                c.acked_version
                    .map_or_else(|| "-".to_string(), |v| v.to_string()),
                trusts.to_string(),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table::format(
        &["SIDECAR", "SERVICE", "CONNECTED", "ACKED", "TRUSTS PENDING"],
        &rows,
    ));
    if s.pending.is_some() {
        out.push('\n');
        if s.lagging.is_empty() {
            out.push_str("no sidecar lags: the pending root becomes the signer\n");
        } else {
            out.push_str(&format!(
                "lagging ({}): {}\n",
                s.lagging.len(),
                s.lagging.join(", ")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_the_roots_and_who_lags() {
        let s: Status = serde_json::from_value(serde_json::json!({
            "active": "r1", "pending": "r2",
            "sidecars": [
                {"id": "a-1", "service": "a", "connected": true, "acked_version": 4, "trusts_pending": true},
                {"id": "b-1", "service": "b", "connected": true, "acked_version": 3, "trusts_pending": false}
            ],
            "lagging": ["b-1"]
        }))
        .expect("status");
        let t = text(&s);
        assert!(
            t.contains("active root:  r1") && t.contains("pending root: r2"),
            "{t}"
        );
        assert!(
            t.lines()
                .any(|l| l.starts_with("a-1") && l.ends_with("yes")),
            "{t}"
        );
        assert!(
            t.lines()
                .any(|l| l.starts_with("b-1") && l.ends_with("no (lags)")),
            "{t}"
        );
        assert!(t.contains("lagging (1): b-1"), "{t}");

        let idle: Status = serde_json::from_value(
            serde_json::json!({"active": "r1", "pending": null, "sidecars": [], "lagging": []}),
        )
        .expect("status");
        let t = text(&idle);
        assert!(
            t.contains("pending root: none") && !t.contains("lagging"),
            "{t}"
        );
    }
}
