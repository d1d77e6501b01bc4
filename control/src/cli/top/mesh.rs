//! One look at a running mesh: the sidecars the control plane knows (with their admin
//! addresses and sync state), then each connected sidecar's `/metrics` and `/stats`, turned
//! into the same per-service rows as `outrigger up` and a small sync table.

use super::SortBy;
use crate::cli::client::Client;
use crate::cli::table;
use crate::cli::up::table::{render, Collector, Row, Scrape};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::net::SocketAddr;

/// A sidecar as `GET /v1/sidecars` lists it. Fields an older control plane does not send are
/// absent, not an error.
#[derive(Debug, Clone, Deserialize)]
pub struct Sidecar {
    pub id: String,
    pub service: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub admin: Option<String>,
    #[serde(default)]
    pub connected: bool,
    #[serde(default)]
    pub acked_version: Option<u64>,
    #[serde(default)]
    pub pushed_version: Option<u64>,
    #[serde(default)]
    pub last_nack: Option<Nack>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Nack {
    pub version: u64,
    pub reason: String,
}

/// What one look saw.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    pub rows: Vec<Row>,
    pub sidecars: Vec<Sidecar>,
    /// Ids of connected sidecars whose admin port did not answer.
    pub unreachable: BTreeSet<String>,
}

/// Looks at the mesh again and again; rates are over the time between two looks.
pub struct Mesh<'a> {
    client: &'a Client,
    collector: Collector,
    primed: bool,
}

impl<'a> Mesh<'a> {
    pub fn new(client: &'a Client) -> Self {
        Self {
            client,
            collector: Collector::new(Vec::new()),
            primed: false,
        }
    }

    /// `None` after the first look: a rate needs two counts, and a table of zeros would
    /// mislead. Fails only when the control plane cannot be asked; a sidecar that does not
    /// answer is shown as unreachable instead.
    pub async fn look(&mut self) -> anyhow::Result<Option<Frame>> {
        let sidecars: Vec<Sidecar> = self.client.get("/v1/sidecars").await?;
        let mut scrapes: Vec<Scrape> = Vec::new();
        let mut unreachable = BTreeSet::new();
        // A disconnected sidecar's admin port may belong to something else by now.
        for s in sidecars.iter().filter(|s| s.connected) {
            let Some(admin) = s
                .admin
                .as_deref()
                .and_then(|a| a.parse::<SocketAddr>().ok())
            else {
                continue;
            };
            let scrape = self.collector.scrape(admin).await;
            if scrape.metrics.is_empty() {
                unreachable.insert(s.id.clone());
            } else {
                scrapes.push(scrape);
            }
        }
        let services: BTreeSet<String> = scrapes.iter().flat_map(Scrape::called).collect();
        let rows = services
            .iter()
            .map(|service| {
                let callers: Vec<&Scrape> = scrapes
                    .iter()
                    .filter(|s| s.called().contains(service))
                    .collect();
                self.collector.row(service, &callers)
            })
            .collect();
        let frame = Frame {
            rows,
            sidecars,
            unreachable,
        };
        Ok(std::mem::replace(&mut self.primed, true).then_some(frame))
    }
}

impl Frame {
    /// The service table (the same as `up`'s), then the sidecars' sync table.
    pub fn text(&self, sort: SortBy) -> String {
        let mut rows = self.rows.clone();
        sort.apply(&mut rows);
        let mut out = render(&rows);
        if rows.is_empty() {
            out.push_str("(no requests between sidecars yet)\n");
        }
        out.push('\n');
        let cells: Vec<Vec<String>> = self.sidecars.iter().map(|s| self.cells(s)).collect();
        out.push_str(&table::format(
            &[
                "SIDECAR", "SERVICE", "VERSION", "ADMIN", "ACKED", "PUSHED", "SYNC",
            ],
            &cells,
        ));
        out
    }

    fn cells(&self, s: &Sidecar) -> Vec<String> {
        let num = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let admin = match (&s.admin, self.unreachable.contains(&s.id)) {
            (None, _) => "-".to_string(),
            (Some(a), false) => a.clone(),
            (Some(a), true) => format!("{a} (no answer)"),
        };
        vec![
            s.id.clone(),
            s.service.clone(),
            s.version.clone().unwrap_or_else(|| "-".into()),
            admin,
            num(s.acked_version),
            num(s.pushed_version),
            sync(s),
        ]
    }
}

/// In sync when the sidecar ACKed the last version pushed to it; a NACK newer than its last
/// ACK is the news, with its reason.
fn sync(s: &Sidecar) -> String {
    if !s.connected {
        return "disconnected".into();
    }
    if let Some(n) = &s.last_nack {
        if s.acked_version.is_none_or(|a| n.version > a) {
            return format!("NACK v{}: {}", n.version, n.reason);
        }
    }
    match (s.acked_version, s.pushed_version) {
        (Some(a), Some(p)) if a >= p => "in sync".into(),
        (_, None) => "-".into(),
        _ => "syncing".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar(acked: Option<u64>, pushed: Option<u64>, nack: Option<u64>) -> Sidecar {
        Sidecar {
            id: "order-v1-0".into(),
            service: "order".into(),
            version: Some("v1".into()),
            admin: Some("127.0.0.1:15000".into()),
            connected: true,
            acked_version: acked,
            pushed_version: pushed,
            last_nack: nack.map(|version| Nack {
                version,
                reason: "bad".into(),
            }),
        }
    }

    #[test]
    fn sync_state_compares_acked_with_pushed() {
        assert_eq!(sync(&sidecar(Some(4), Some(4), None)), "in sync");
        assert_eq!(sync(&sidecar(Some(3), Some(4), None)), "syncing");
        assert_eq!(sync(&sidecar(Some(3), Some(4), Some(4))), "NACK v4: bad");
        assert_eq!(sync(&sidecar(Some(5), Some(5), Some(4))), "in sync");
        let gone = Sidecar {
            connected: false,
            ..sidecar(Some(4), Some(4), None)
        };
        assert_eq!(sync(&gone), "disconnected");
    }

    #[test]
    fn a_frame_has_up_s_columns_and_the_sync_table() {
        let frame = Frame {
            rows: vec![Row {
                service: "payment".into(),
                rps: 12.5,
                ..Row::default()
            }],
            sidecars: vec![sidecar(Some(4), Some(4), None)],
            unreachable: BTreeSet::from(["order-v1-0".to_string()]),
        };
        let text = frame.text(SortBy::Service);
        let up_header = render(&[]);
        assert!(text.starts_with(&up_header), "{text}");
        assert!(text.contains("payment"), "{text}");
        assert!(text.contains("127.0.0.1:15000 (no answer)"), "{text}");
        assert!(text.contains("in sync"), "{text}");
        let lonely = Frame::default().text(SortBy::Service);
        assert!(lonely.contains("no requests"), "{lonely}");
    }

    #[test]
    fn older_control_planes_list_sidecars_without_the_new_fields() {
        let old = r#"[{"id":"a","service":"order","connected":true,"acked_version":3,"last_nack":null,"last_seen":"x"}]"#;
        let list: Vec<Sidecar> = serde_json::from_str(old).unwrap_or_default();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].admin, None);
    }
}
