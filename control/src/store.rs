//! Durable storage of the mesh resources, the registry's instances, the revision high-water
//! mark and the CA's state ([`ca`]), in one redb file under `--data-dir`. Every apply is one
//! write transaction: it is stored whole or not at all.

pub mod ca;

use crate::registry::Instance;
use ca::{CaChange, StoredCa};
use outrigger_config::mesh::{Kind, Resource};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};

/// (kind, name) → the resource as JSON (`{"kind","metadata","spec"}`).
const RESOURCES: TableDefinition<(&str, &str), &str> = TableDefinition::new("resources");
/// Instance id → the registered instance as JSON. Kept so that a restart of the control plane
/// changes nothing the sidecars see (see `registry`).
const INSTANCES: TableDefinition<&str, &str> = TableDefinition::new("instances");
/// Small named values; only [`HIGH_WATER`] for now.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// No revision at or below this number was ever handed out, so a restart continues above it.
const HIGH_WATER: &str = "revision_high_water";

const FILE_NAME: &str = "outrigger-control.redb";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Db(#[from] redb::Error),
    #[error("stored instance {id} is not valid JSON: {source}")]
    CorruptInstance {
        id: String,
        source: serde_json::Error,
    },
    #[error("stored resource {kind}/{name} is not valid JSON: {source}")]
    Corrupt {
        kind: String,
        name: String,
        source: serde_json::Error,
    },
    #[error("stored CA {what} is not valid JSON: {source}")]
    CorruptCa {
        what: String,
        source: serde_json::Error,
    },
    #[error("cannot encode resource: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("store task failed: {0}")]
    Task(String),
}

// redb reports each step with its own error type; all of them become `redb::Error`.
macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
db_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// One change of an apply, delete, split, the registry or the CA.
#[derive(Debug, Clone)]
pub enum Change {
    Put(Box<Resource>),
    Delete(Kind, String),
    PutInstance(Box<Instance>),
    DeleteInstance(String),
    Ca(CaChange),
}

/// What was stored when the process last stopped.
#[derive(Debug, Default)]
pub struct Loaded {
    pub resources: Vec<Resource>,
    pub instances: Vec<Instance>,
    pub high_water: u64,
    pub ca: StoredCa,
}

#[derive(Debug)]
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the store in `dir`. After a crash redb repairs the file here.
    pub fn open(dir: &Path) -> Result<(Store, Loaded), StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let db = Database::create(dir.join(FILE_NAME))?;
        // Read transactions fail on tables that were never created.
        let txn = db.begin_write()?;
        {
            txn.open_table(RESOURCES)?;
            txn.open_table(INSTANCES)?;
            txn.open_table(META)?;
            ca::create_tables(&txn)?;
        }
        txn.commit()?;
        let store = Store { db };
        let loaded = store.load()?;
        Ok((store, loaded))
    }

    fn load(&self) -> Result<Loaded, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RESOURCES)?;
        let mut resources = Vec::new();
        for item in table.iter()? {
            let (key, value) = item?;
            let (kind, name) = key.value();
            let r: Resource =
                serde_json::from_str(value.value()).map_err(|source| StoreError::Corrupt {
                    kind: kind.to_string(),
                    name: name.to_string(),
                    source,
                })?;
            resources.push(r);
        }
        let mut instances = Vec::new();
        for item in txn.open_table(INSTANCES)?.iter()? {
            let (key, value) = item?;
            let i: Instance = serde_json::from_str(value.value()).map_err(|source| {
                StoreError::CorruptInstance {
                    id: key.value().to_string(),
                    source,
                }
            })?;
            instances.push(i);
        }
        let meta = txn.open_table(META)?;
        let high_water = meta.get(HIGH_WATER)?.map(|v| v.value()).unwrap_or(0);
        Ok(Loaded {
            resources,
            instances,
            high_water,
            ca: ca::load(&txn)?,
        })
    }

    /// Stores `changes` and the new high-water mark in one durable transaction.
    pub fn commit(&self, changes: &[Change], high_water: u64) -> Result<(), StoreError> {
        // Encode first, so that nothing is written if any resource cannot be encoded.
        let mut puts = Vec::new();
        let mut instance_puts = Vec::new();
        for c in changes {
            match c {
                Change::Put(r) => {
                    puts.push((r.kind(), r.name().to_string(), serde_json::to_string(&**r)?))
                }
                Change::PutInstance(i) => {
                    instance_puts.push((i.id.as_str(), serde_json::to_string(&**i)?))
                }
                Change::Delete(..) | Change::DeleteInstance(_) | Change::Ca(_) => {}
            }
        }
        let ca_changes: Vec<&CaChange> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Ca(c) => Some(c),
                _ => None,
            })
            .collect();
        let ca_encoded = ca::encode(&ca_changes)?;
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(RESOURCES)?;
            for (kind, name, json) in &puts {
                table.insert((kind.as_str(), name.as_str()), json.as_str())?;
            }
            let mut instances = txn.open_table(INSTANCES)?;
            for (id, json) in &instance_puts {
                instances.insert(*id, json.as_str())?;
            }
            for c in changes {
                match c {
                    Change::Delete(kind, name) => {
                        table.remove((kind.as_str(), name.as_str()))?;
                    }
                    Change::DeleteInstance(id) => {
                        instances.remove(id.as_str())?;
                    }
                    Change::Put(_) | Change::PutInstance(_) | Change::Ca(_) => {}
                }
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(HIGH_WATER, high_water)?;
        }
        if !ca_changes.is_empty() {
            ca::write(&txn, &ca_changes, &ca_encoded)?;
        }
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrigger_config::mesh::parse_resources;

    #[test]
    fn commits_survive_reopening_and_deletes_remove() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let text = include_str!("../../config/examples/shop.yaml");
        let resources = parse_resources(text)?;
        {
            let (store, loaded) = Store::open(dir.path())?;
            assert!(loaded.resources.is_empty());
            assert_eq!(loaded.high_water, 0);
            let changes: Vec<_> = resources
                .iter()
                .map(|r| Change::Put(Box::new(r.clone())))
                .collect();
            store.commit(&changes, 7)?;
            store.commit(&[Change::Delete(Kind::Route, "reads".into())], 8)?;
        }
        let (_, loaded) = Store::open(dir.path())?;
        assert_eq!(loaded.high_water, 8);
        assert_eq!(loaded.resources.len(), resources.len() - 1);
        for r in &loaded.resources {
            assert!(
                resources.contains(r),
                "{r:?} changed on the way through the store"
            );
        }
        Ok(())
    }
}
