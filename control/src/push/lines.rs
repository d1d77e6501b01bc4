//! Each service's snapshot, compiled and encoded once per revision and shared by every
//! stream of that service. Without it, each of N sidecars compiled and serialised its own
//! copy on subscribe and again on every change: O(N) work for one answer, which is what a
//! thousand sidecars reconnecting at once, or one apply in a large mesh, paid for.

use super::Line;
use crate::snapshot::compile;
use crate::state::View;
use bytes::Bytes;
use outrigger_config::{Mtls, Snapshot};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// One service's snapshot line at one revision.
#[derive(Debug)]
pub struct Compiled {
    /// The view revision it was compiled from.
    pub revision: u64,
    /// The version the line carries.
    pub version: u64,
    /// Changes only when the content does: a revision elsewhere in the mesh is no news to
    /// this service's sidecars, so streams compare this, not `version`.
    pub content: u64,
    /// The NDJSON line, newline included.
    pub line: Bytes,
    /// The mTLS part of the line, to tell later which roots an ACK acknowledged.
    pub mtls: Arc<Mtls>,
    /// The snapshot without its version, to tell the next revision's content from this one.
    unversioned: Snapshot,
}

/// The newest compiled line per service.
#[derive(Default)]
pub struct Lines {
    // Held for lookups and inserts only, never while compiling and never across an await.
    by_service: Mutex<HashMap<String, Arc<Compiled>>>,
    next_content: std::sync::atomic::AtomicU64,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot encode the snapshot of {service:?}: {source}")]
pub struct EncodeError {
    service: String,
    source: serde_json::Error,
}

impl Lines {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Compiled>>> {
        // Every update is one insert, so the map is whole even if a holder panicked.
        self.by_service.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The line for `service` as of `view`, or as of a newer view when another stream
    /// already compiled one: sending the newer state is as right, and the stream's watch
    /// wakes it again for the revision it has not seen.
    pub fn get(&self, service: &str, view: &View) -> Result<Arc<Compiled>, EncodeError> {
        let previous = self.lock().get(service).cloned();
        if let Some(c) = &previous {
            if c.revision >= view.revision {
                return Ok(c.clone());
            }
        }
        // Compile outside the lock: two streams racing on a new revision may both compile,
        // and the insert below keeps one.
        let snapshot = compile(
            service,
            view.revision,
            &view.resources,
            &view.instances,
            &view.mtls,
        );
        let mut line = serde_json::to_vec(&Line::Snapshot {
            version: snapshot.version,
            snapshot: &snapshot,
        })
        .map_err(|source| EncodeError {
            service: service.to_string(),
            source,
        })?;
        line.push(b'\n');
        let version = snapshot.version;
        let unversioned = Snapshot {
            version: 0,
            ..snapshot
        };

        let mut map = self.lock();
        let current = map.get(service);
        if let Some(c) = current {
            if c.revision >= view.revision {
                return Ok(c.clone());
            }
        }
        let content = match current {
            Some(c) if c.unversioned == unversioned => c.content,
            _ => self
                .next_content
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        let compiled = Arc::new(Compiled {
            revision: view.revision,
            version,
            content,
            line: Bytes::from(line),
            mtls: view.mtls.clone(),
            unversioned,
        });
        map.insert(service.to_string(), compiled.clone());
        Ok(compiled)
    }

    /// How many services have a compiled line (for tests and metrics).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Resources;

    fn view(revision: u64, resources: &Arc<Resources>, mtls: &Arc<Mtls>) -> View {
        View {
            revision,
            resources: resources.clone(),
            instances: Arc::new(Vec::new()),
            mtls: mtls.clone(),
        }
    }

    fn parse(line: &Bytes) -> serde_json::Value {
        serde_json::from_slice(line).unwrap_or_default()
    }

    #[test]
    fn one_compile_per_service_and_revision_shared_by_every_stream() -> Result<(), EncodeError> {
        let lines = Lines::default();
        let resources = Arc::new(Resources::default());
        let mtls = Arc::new(Mtls::default());
        let v1 = view(1, &resources, &mtls);
        let a = lines.get("order", &v1)?;
        let b = lines.get("order", &v1)?;
        assert!(
            Arc::ptr_eq(&a, &b),
            "the second stream reuses the first's line"
        );
        assert_eq!(parse(&a.line)["snapshot"]["service"], "order");
        assert_eq!(parse(&a.line)["version"], 1);
        assert!(a.line.ends_with(b"\n"));

        let p = lines.get("payment", &v1)?;
        assert_eq!(parse(&p.line)["snapshot"]["service"], "payment");
        assert_eq!(lines.len(), 2);

        // A stream still holding revision 1 gets the newer line another stream compiled.
        let v2 = view(2, &resources, &mtls);
        let newer = lines.get("order", &v2)?;
        assert_eq!(newer.version, 2);
        assert!(Arc::ptr_eq(&lines.get("order", &v1)?, &newer));
        Ok(())
    }

    #[test]
    fn content_changes_only_when_the_snapshot_does() -> Result<(), EncodeError> {
        let lines = Lines::default();
        let resources = Arc::new(Resources::default());
        let mtls = Arc::new(Mtls::default());
        let first = lines.get("order", &view(1, &resources, &mtls))?;
        let same = lines.get("order", &view(2, &resources, &mtls))?;
        assert_eq!(same.version, 2, "the line carries the newest revision");
        assert_eq!(first.content, same.content, "no news for order's sidecars");

        let rotated = Arc::new(Mtls {
            trust_bundle: vec!["another root".into()],
            ..Mtls::default()
        });
        let changed = lines.get("order", &view(3, &resources, &rotated))?;
        assert_ne!(changed.content, same.content);
        assert_eq!(changed.mtls.trust_bundle, vec!["another root".to_string()]);
        Ok(())
    }
}
