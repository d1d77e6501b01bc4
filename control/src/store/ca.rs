//! The mesh CA's tables: roots (certificates and where their keys are, never the keys), which
//! root signs, the issued leaves' expiries per root, and the hashes of bootstrap tokens.

use super::StoreError;
use crate::ca::root::RootRecord;
use crate::ca::tokens::TokenRecord;
use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

/// Root id → [`RootRecord`] as JSON.
const ROOTS: TableDefinition<&str, &str> = TableDefinition::new("ca_roots");
/// Small named strings: [`ACTIVE`] and [`PENDING`].
const CA_META: TableDefinition<&str, &str> = TableDefinition::new("ca_meta");
/// The id of the root that signs.
const ACTIVE: &str = "active_root";
/// The id of a root in the bundle that waits for every sidecar to trust it before it signs.
const PENDING: &str = "pending_root";
/// (root id, serial in hex) → the leaf's notAfter, Unix seconds. Rotation reads these to tell
/// which roots still have unexpired leaves.
const LEAVES: TableDefinition<(&str, &str), u64> = TableDefinition::new("ca_leaves");
/// SHA-256 of a bootstrap token (hex) → [`TokenRecord`] as JSON.
const TOKENS: TableDefinition<&str, &str> = TableDefinition::new("bootstrap_tokens");

/// One change of the CA's state.
#[derive(Debug, Clone, PartialEq)]
pub enum CaChange {
    PutRoot(Box<RootRecord>),
    /// Removes the root and the record of its leaves.
    DeleteRoot(String),
    SetActive(String),
    /// A new root that signs only once every connected sidecar trusts it; `None` ends the wait.
    SetPending(Option<String>),
    PutLeaf {
        root: String,
        serial: String,
        not_after_unix: u64,
    },
    DeleteLeaf {
        root: String,
        serial: String,
    },
    PutToken {
        hash: String,
        record: TokenRecord,
    },
    DeleteToken(String),
}

/// The CA's state as stored.
#[derive(Debug, Default)]
pub struct StoredCa {
    pub roots: Vec<RootRecord>,
    pub active: Option<String>,
    pub pending: Option<String>,
    /// (root id, serial, notAfter).
    pub leaves: Vec<(String, String, u64)>,
    pub tokens: Vec<(String, TokenRecord)>,
}

pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(ROOTS)?;
    txn.open_table(CA_META)?;
    txn.open_table(LEAVES)?;
    txn.open_table(TOKENS)?;
    Ok(())
}

pub(super) fn load(txn: &ReadTransaction) -> Result<StoredCa, StoreError> {
    let corrupt = |what: &str, key: &str, source| StoreError::CorruptCa {
        what: format!("{what} {key}"),
        source,
    };
    let mut out = StoredCa::default();
    for item in txn.open_table(ROOTS)?.iter()? {
        let (key, value) = item?;
        let r: RootRecord =
            serde_json::from_str(value.value()).map_err(|e| corrupt("root", key.value(), e))?;
        out.roots.push(r);
    }
    crate::ca::root::sort(&mut out.roots);
    out.active = txn
        .open_table(CA_META)?
        .get(ACTIVE)?
        .map(|v| v.value().to_string());
    out.pending = txn
        .open_table(CA_META)?
        .get(PENDING)?
        .map(|v| v.value().to_string());
    for item in txn.open_table(LEAVES)?.iter()? {
        let (key, value) = item?;
        let (root, serial) = key.value();
        out.leaves
            .push((root.to_string(), serial.to_string(), value.value()));
    }
    for item in txn.open_table(TOKENS)?.iter()? {
        let (key, value) = item?;
        let r: TokenRecord =
            serde_json::from_str(value.value()).map_err(|e| corrupt("token", key.value(), e))?;
        out.tokens.push((key.value().to_string(), r));
    }
    Ok(out)
}

/// Encodes what must be encoded before the transaction starts, so nothing is half-written.
pub(super) fn encode(changes: &[&CaChange]) -> Result<Vec<Option<String>>, StoreError> {
    changes
        .iter()
        .map(|c| match c {
            CaChange::PutRoot(r) => serde_json::to_string(&**r).map(Some),
            CaChange::PutToken { record, .. } => serde_json::to_string(record).map(Some),
            _ => Ok(None),
        })
        .collect::<Result<_, _>>()
        .map_err(StoreError::Encode)
}

pub(super) fn write(
    txn: &WriteTransaction,
    changes: &[&CaChange],
    encoded: &[Option<String>],
) -> Result<(), StoreError> {
    let mut roots = txn.open_table(ROOTS)?;
    let mut meta = txn.open_table(CA_META)?;
    let mut leaves = txn.open_table(LEAVES)?;
    let mut tokens = txn.open_table(TOKENS)?;
    for (c, json) in changes.iter().zip(encoded) {
        let json = json.as_deref().unwrap_or_default();
        match c {
            CaChange::PutRoot(r) => {
                roots.insert(r.id.as_str(), json)?;
            }
            CaChange::DeleteRoot(id) => {
                roots.remove(id.as_str())?;
                let serials: Vec<String> = leaves
                    .range((id.as_str(), "")..)?
                    .map_while(|item| match item {
                        Ok((k, _)) if k.value().0 == id => Some(Ok(k.value().1.to_string())),
                        Ok(_) => None,
                        Err(e) => Some(Err(e)),
                    })
                    .collect::<Result<_, _>>()?;
                for s in &serials {
                    leaves.remove((id.as_str(), s.as_str()))?;
                }
            }
            CaChange::SetActive(id) => {
                meta.insert(ACTIVE, id.as_str())?;
            }
            CaChange::SetPending(Some(id)) => {
                meta.insert(PENDING, id.as_str())?;
            }
            CaChange::SetPending(None) => {
                meta.remove(PENDING)?;
            }
            CaChange::PutLeaf {
                root,
                serial,
                not_after_unix,
            } => {
                leaves.insert((root.as_str(), serial.as_str()), *not_after_unix)?;
            }
            CaChange::DeleteLeaf { root, serial } => {
                leaves.remove((root.as_str(), serial.as_str()))?;
            }
            CaChange::PutToken { hash, .. } => {
                tokens.insert(hash.as_str(), json)?;
            }
            CaChange::DeleteToken(hash) => {
                tokens.remove(hash.as_str())?;
            }
        }
    }
    Ok(())
}
