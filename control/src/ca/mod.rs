//! The mesh CA. The control plane signs each sidecar's certificate, whose only subject
//! alternative name is its service's SPIFFE identity, and pushes the roots to trust in every
//! snapshot.
//!
//! - [`root`]: root certificates and their keys (generated, imported, loaded);
//! - [`tokens`]: bootstrap tokens, stored as hashes;
//! - [`issue`]: checking a CSR and signing a leaf;
//! - [`rotation`]: when a root may leave the trust bundle.
//!
//! A new root first joins the bundle as *pending*; it signs only once every connected sidecar
//! has acknowledged a bundle holding it (the server decides when, see `crate::rotation`), so
//! no sidecar is handed a peer certificate it cannot verify. The control plane's own serving
//! certificate is signed by the *oldest* root, so trust anchors handed out before a rotation
//! keep working until that root is dropped.
//!
//! [`Authority`] holds the CA's state in memory. It never writes: each operation returns the
//! [`CaChange`]s to store, and the state task applies them here once they are stored, so the
//! store and the memory never disagree.

pub mod issue;
pub mod root;
pub mod rotation;
pub mod tokens;

use crate::clock;
use crate::store::ca::{CaChange, StoredCa};
use issue::{CsrError, Leaf};
use outrigger_config::{identity, Mtls, MtlsMode};
use rcgen::{KeyPair, SanType};
use root::{RootRecord, Signer};
use rotation::{DropCheck, DropRefusal, Unexpired};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use tokens::{Minted, TokenError, TokenInfo, Tokens};

/// What a certificate request is authorised by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A bootstrap token (the secret as presented): a CSR for the token's service.
    Token(String),
    /// A workload's own current certificate: a renewal, for that service only.
    Service(String),
    /// An operator's admin token: a CSR for any service of the trust domain.
    Operator,
}

/// The SPIFFE id of the control plane's serving certificate, under `trust_domain`.
pub fn control_plane_identity(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/control-plane")
}

/// Failures of the CA itself (files, randomness, crypto): the control plane's problem, never
/// the caller's.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA root (key file {file}): {reason}")]
    BadRoot { file: PathBuf, reason: String },
    #[error("the store names {0} as the active root, but has no such root")]
    MissingActive(String),
    #[error("no randomness from the OS: {0}")]
    Random(String),
    #[error("certificate: {0}")]
    Crypto(rcgen::Error),
    #[error("a time out of the range certificates can hold")]
    Time,
}

/// Why a certificate was not issued.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the control plane is shutting down")]
    Stopped,
}

/// How the CA is set up, from the command line.
#[derive(Debug, Clone)]
pub struct CaOptions {
    /// Where generated roots are kept: `<data-dir>/ca`.
    pub dir: PathBuf,
    pub trust_domain: String,
    /// Of each leaf.
    pub cert_lifetime: Duration,
    /// Pushed to the sidecars.
    pub mode: MtlsMode,
    /// An operator's root: (certificate file, key file).
    pub operator_root: Option<(PathBuf, PathBuf)>,
}

/// A root as `GET /v1/ca/roots` lists it: never its key.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RootInfo {
    pub id: String,
    /// RFC 3339.
    pub not_after: String,
    pub active: bool,
    /// In the bundle, waiting for every sidecar to trust it before it signs.
    pub pending: bool,
    pub unexpired_leaves: usize,
    /// RFC 3339: when the last unexpired leaf signed by this root expires.
    pub last_leaf_expires_at: Option<String>,
    /// False for a root the operator gave.
    pub generated: bool,
}

/// A certificate as the API returns it.
#[derive(Debug, Clone)]
pub struct Issued {
    pub leaf: Leaf,
    pub identity: String,
    pub trust_bundle: Vec<String>,
}

/// The CA's state.
pub struct Authority {
    options: CaOptions,
    /// Oldest first.
    roots: Vec<RootRecord>,
    signer: Signer,
    /// A root in the bundle that will sign once every sidecar trusts it.
    pending: Option<String>,
    /// Root id → serial → notAfter of the leaves it signed that may not have expired yet.
    leaves: BTreeMap<String, BTreeMap<String, u64>>,
    tokens: Tokens,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.options.trust_domain)
            .field("active", &self.signer.record.id)
            .field("roots", &self.roots.len())
            .field("tokens", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// The CA from what was stored; on first start (or with a new operator root) also the
    /// changes that make it so, for the caller to store.
    pub fn open(
        options: CaOptions,
        stored: StoredCa,
        now: SystemTime,
    ) -> Result<(Authority, Vec<CaChange>), CaError> {
        let mut roots = stored.roots;
        let mut changes = Vec::new();
        let known = |roots: &[RootRecord], id: &str| roots.iter().any(|r| r.id == id);
        let signer = match (&options.operator_root, &stored.active) {
            // A root the operator gives that the store does not know yet becomes the signer;
            // one it knows leaves alone whatever rotation did since.
            (Some((cert, key)), active) => {
                let given = root::import(cert, key, now)?;
                if known(&roots, &given.record.id) {
                    match active {
                        Some(id) if *id != given.record.id => load_active(&roots, id, now)?,
                        _ => given,
                    }
                } else {
                    tracing::info!(root = %given.record.id, "CA root taken from --ca-cert/--ca-key");
                    changes.push(CaChange::PutRoot(Box::new(given.record.clone())));
                    changes.push(CaChange::SetActive(given.record.id.clone()));
                    roots.push(given.record.clone());
                    root::sort(&mut roots);
                    given
                }
            }
            (None, Some(id)) => load_active(&roots, id, now)?,
            (None, None) => {
                let created = root::generate(&options.dir, &options.trust_domain, now)?;
                tracing::info!(root = %created.record.id, dir = %options.dir.display(), "CA root created");
                changes.push(CaChange::PutRoot(Box::new(created.record.clone())));
                changes.push(CaChange::SetActive(created.record.id.clone()));
                roots.push(created.record.clone());
                created
            }
        };
        let mut leaves: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for (root, serial, not_after) in stored.leaves {
            leaves.entry(root).or_default().insert(serial, not_after);
        }
        let pending = stored
            .pending
            .filter(|p| roots.iter().any(|r| r.id == *p) && *p != signer.record.id);
        let ca = Authority {
            options,
            roots,
            signer,
            pending,
            leaves,
            tokens: Tokens::from_stored(stored.tokens),
        };
        Ok((ca, changes))
    }

    pub fn trust_domain(&self) -> &str {
        &self.options.trust_domain
    }

    pub fn active_id(&self) -> &str {
        &self.signer.record.id
    }

    pub fn pending(&self) -> Option<&RootRecord> {
        let id = self.pending.as_ref()?;
        self.roots.iter().find(|r| r.id == *id)
    }

    /// The roots' certificates, oldest first: what peers must trust.
    pub fn trust_bundle(&self) -> Vec<String> {
        self.roots.iter().map(|r| r.cert_pem.clone()).collect()
    }

    /// What every snapshot carries.
    pub fn mtls(&self) -> Mtls {
        Mtls {
            mode: self.options.mode,
            trust_domain: self.options.trust_domain.clone(),
            trust_bundle: self.trust_bundle(),
        }
    }

    fn unexpired(&self, id: &str, now: SystemTime) -> Option<Unexpired> {
        self.leaves
            .get(id)
            .and_then(|l| rotation::unexpired(l.values(), clock::unix(now)))
    }

    pub fn roots(&self, now: SystemTime) -> Vec<RootInfo> {
        self.roots
            .iter()
            .map(|r| {
                let u = self.unexpired(&r.id, now);
                RootInfo {
                    id: r.id.clone(),
                    not_after: clock::rfc3339(r.not_after_unix),
                    active: r.id == self.signer.record.id,
                    pending: self.pending.as_ref() == Some(&r.id),
                    unexpired_leaves: u.map_or(0, |u| u.count),
                    last_leaf_expires_at: u.map(|u| clock::rfc3339(u.last_not_after)),
                    generated: r.generated,
                }
            })
            .collect()
    }

    /// A new bootstrap token for `service` and the changes that store it (and forget the
    /// expired ones).
    pub fn mint_token(
        &self,
        service: &str,
        ttl: Duration,
        uses: Option<u32>,
        now: SystemTime,
    ) -> Result<(Minted, Vec<CaChange>), CaError> {
        let minted = tokens::mint(service, ttl, uses, now)?;
        let mut changes: Vec<CaChange> = self
            .tokens
            .expired(now)
            .into_iter()
            .map(CaChange::DeleteToken)
            .collect();
        changes.push(CaChange::PutToken {
            hash: minted.hash.clone(),
            record: minted.record.clone(),
        });
        Ok((minted, changes))
    }

    pub fn tokens(&self, now: SystemTime) -> Vec<TokenInfo> {
        self.tokens.list(now)
    }

    /// The change that revokes the token with this id, if there is one.
    pub fn revoke_token(&self, id: &str) -> Option<CaChange> {
        self.tokens.by_id(id).map(CaChange::DeleteToken)
    }

    /// Signs `csr` if `credential` allows the identity it asks for; also the changes that
    /// record the leaf, spend a use of a bootstrap token, and forget expired leaves.
    pub fn sign(
        &self,
        credential: &Credential,
        csr: &str,
        now: SystemTime,
    ) -> Result<(Issued, Vec<CaChange>), SignError> {
        let mut spend = None;
        let identity = match credential {
            Credential::Token(token) => {
                let (hash, record) = self.tokens.check(token, now)?;
                if let Some(n) = record.uses_left {
                    spend = Some(match n.saturating_sub(1) {
                        0 => CaChange::DeleteToken(hash),
                        left => CaChange::PutToken {
                            hash,
                            record: tokens::TokenRecord {
                                uses_left: Some(left),
                                ..record.clone()
                            },
                        },
                    });
                }
                identity(&self.options.trust_domain, &record.service)
            }
            Credential::Service(service) => identity(&self.options.trust_domain, service),
            Credential::Operator => {
                let asked = issue::requested_identity(csr)?;
                let prefix = identity(&self.options.trust_domain, "");
                match asked.strip_prefix(&prefix) {
                    Some(name) if valid_service_name(name) => asked,
                    _ => {
                        return Err(SignError::Csr(CsrError::WrongIdentity {
                            expected: format!("{prefix}<service>"),
                            got: format!("URI:{asked}"),
                        }))
                    }
                }
            }
        };
        let key = issue::check_csr(csr, &identity)?;
        let leaf = issue::sign(
            &key,
            &identity,
            &[],
            &self.signer,
            now,
            self.options.cert_lifetime,
        )?;
        let root = self.signer.record.id.clone();
        let now_unix = clock::unix(now);
        let mut changes: Vec<CaChange> = self
            .leaves
            .iter()
            .flat_map(|(root, l)| {
                l.iter()
                    .filter(move |(_, n)| **n < now_unix)
                    .map(move |(serial, _)| CaChange::DeleteLeaf {
                        root: root.clone(),
                        serial: serial.clone(),
                    })
            })
            .collect();
        changes.push(CaChange::PutLeaf {
            root,
            serial: leaf.serial.clone(),
            not_after_unix: leaf.not_after_unix,
        });
        changes.extend(spend);
        let issued = Issued {
            leaf,
            identity,
            trust_bundle: self.trust_bundle(),
        };
        Ok((issued, changes))
    }

    /// A new root, with its files written, and the changes that put it in the bundle as
    /// pending (or, with `force`, make it the signer at once: call [`Authority::activate`]
    /// once they are stored, or [`root::remove_files`] if they are not).
    pub fn new_root(
        &self,
        now: SystemTime,
        force: bool,
    ) -> Result<(Signer, Vec<CaChange>), CaError> {
        let signer = root::generate(&self.options.dir, &self.options.trust_domain, now)?;
        let id = signer.record.id.clone();
        let mut changes = vec![CaChange::PutRoot(Box::new(signer.record.clone()))];
        if force {
            changes.push(CaChange::SetActive(id));
            changes.push(CaChange::SetPending(None));
        } else {
            changes.push(CaChange::SetPending(Some(id)));
        }
        Ok((signer, changes))
    }

    /// The pending root's signer and the changes that make it the active one.
    pub fn activate_pending(
        &self,
        now: SystemTime,
    ) -> Result<Option<(Signer, Vec<CaChange>)>, CaError> {
        let Some(record) = self.pending() else {
            return Ok(None);
        };
        let signer = root::load(record, now)?;
        let changes = vec![
            CaChange::SetActive(record.id.clone()),
            CaChange::SetPending(None),
        ];
        Ok(Some((signer, changes)))
    }

    /// The control plane's own serving certificate for `key`: its SPIFFE id plus `names`,
    /// signed by the oldest root, so that anchors handed out before a rotation still verify
    /// it. Not recorded as a leaf: it is re-issued whenever the bundle changes, so it never
    /// holds a root back from being dropped.
    pub fn sign_server(
        &self,
        key: &KeyPair,
        names: &[SanType],
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<Leaf, CaError> {
        let id = control_plane_identity(&self.options.trust_domain);
        match self.roots.first() {
            Some(oldest) if oldest.id != self.signer.record.id => {
                let signer = root::load(oldest, now)?;
                issue::sign(key, &id, names, &signer, now, lifetime)
            }
            _ => issue::sign(key, &id, names, &self.signer, now, lifetime),
        }
    }

    /// Makes a stored new root the signer.
    pub fn activate(&mut self, signer: Signer) {
        self.signer = signer;
    }

    /// Whether root `id` may be dropped now; the change that drops it, and the unexpired
    /// leaves `force` dropped it over.
    pub fn plan_drop(
        &self,
        id: &str,
        force: bool,
        now: SystemTime,
    ) -> Result<(RootRecord, Option<Unexpired>, CaChange), DropRefusal> {
        let record = self.roots.iter().find(|r| r.id == id);
        let forced = rotation::check_drop(&DropCheck {
            id,
            known: record.is_some(),
            // A pending root is about to sign: it goes no more than the active one.
            active: id == self.signer.record.id || self.pending.as_deref() == Some(id),
            unexpired: self.unexpired(id, now),
            force,
        })?;
        let record = record
            .cloned()
            .ok_or(DropRefusal::Unknown(id.to_string()))?;
        Ok((record, forced, CaChange::DeleteRoot(id.to_string())))
    }

    /// Applies changes that have been stored.
    pub fn apply(&mut self, changes: &[CaChange]) {
        for c in changes {
            match c {
                CaChange::PutRoot(r) => {
                    self.roots.retain(|x| x.id != r.id);
                    self.roots.push((**r).clone());
                    root::sort(&mut self.roots);
                }
                CaChange::DeleteRoot(id) => {
                    self.roots.retain(|r| r.id != *id);
                    self.leaves.remove(id);
                    if self.pending.as_ref() == Some(id) {
                        self.pending = None;
                    }
                }
                // The signer itself changes in `activate`.
                CaChange::SetActive(_) => {}
                CaChange::SetPending(p) => self.pending = p.clone(),
                CaChange::PutLeaf {
                    root,
                    serial,
                    not_after_unix,
                } => {
                    self.leaves
                        .entry(root.clone())
                        .or_default()
                        .insert(serial.clone(), *not_after_unix);
                }
                CaChange::DeleteLeaf { root, serial } => {
                    if let Some(l) = self.leaves.get_mut(root) {
                        l.remove(serial);
                    }
                }
                CaChange::PutToken { hash, record } => {
                    self.tokens.insert(hash.clone(), record.clone());
                }
                CaChange::DeleteToken(hash) => self.tokens.remove(hash),
            }
        }
    }
}

fn load_active(roots: &[RootRecord], id: &str, now: SystemTime) -> Result<Signer, CaError> {
    let record = roots
        .iter()
        .find(|r| r.id == id)
        .ok_or_else(|| CaError::MissingActive(id.to_string()))?;
    root::load(record, now)
}

/// Checks a SPIFFE trust domain: lower-case letters, digits, `.`, `-` and `_`, at most 255.
pub fn check_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty() || td.len() > 255 {
        return Err("a trust domain is 1 to 255 characters".into());
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err(format!(
            "{td:?}: a trust domain has only lower-case letters, digits, '.', '-' and '_'"
        ));
    }
    Ok(())
}

fn valid_service_name(name: &str) -> bool {
    let mut v = outrigger_config::Validator::default();
    v.name(name, outrigger_config::path::FieldPath::root());
    v.problems.is_empty()
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn options(dir: &std::path::Path) -> CaOptions {
        CaOptions {
            dir: dir.join("ca"),
            trust_domain: "outrigger.local".into(),
            cert_lifetime: Duration::from_secs(60),
            mode: MtlsMode::Strict,
            operator_root: None,
        }
    }

    fn csr(identity: &str) -> Result<String, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(identity.try_into()?)];
        params.serialize_request(&key)?.pem()
    }

    #[test]
    fn trust_domains_are_spiffe_names() {
        assert!(check_trust_domain("outrigger.local").is_ok());
        assert!(check_trust_domain("prod_1-eu.example").is_ok());
        for bad in ["", "Upper.case", "a/b", "spiffe://x", "has space"] {
            assert!(check_trust_domain(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn first_start_creates_a_root_and_later_starts_load_it(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let now = SystemTime::now();
        let (ca, changes) = Authority::open(options(dir.path()), StoredCa::default(), now)?;
        assert_eq!(changes.len(), 2);
        let id = ca.active_id().to_string();
        assert_eq!(ca.mtls().trust_bundle.len(), 1);
        assert_eq!(ca.mtls().mode, MtlsMode::Strict);

        let stored = StoredCa {
            roots: ca.roots.clone(),
            active: Some(id.clone()),
            ..StoredCa::default()
        };
        let (again, changes) = Authority::open(options(dir.path()), stored, now)?;
        assert!(changes.is_empty());
        assert_eq!(again.active_id(), id);
        Ok(())
    }

    #[test]
    fn tokens_sign_only_their_service_and_rotation_moves_the_signer(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let now = SystemTime::now();
        let (mut ca, _) = Authority::open(options(dir.path()), StoredCa::default(), now)?;
        let (minted, changes) = ca.mint_token("payment", Duration::from_secs(60), None, now)?;
        ca.apply(&changes);
        let token = &Credential::Token(minted.secret.expose().to_string());
        let id = "spiffe://outrigger.local/service/payment";

        let (issued, changes) = ca.sign(token, &csr(id)?, now)?;
        assert_eq!(issued.identity, id);
        ca.apply(&changes);
        let first = ca.active_id().to_string();
        assert_eq!(ca.roots(now)[0].unexpired_leaves, 1);

        let other = ca.sign(token, &csr("spiffe://outrigger.local/service/order")?, now);
        assert!(matches!(
            other,
            Err(SignError::Csr(CsrError::WrongIdentity { .. }))
        ));
        assert!(matches!(
            ca.sign(&Credential::Token("otb_nope".into()), &csr(id)?, now),
            Err(SignError::Token(TokenError::Unknown))
        ));

        // A second later: roots are listed oldest first.
        let (signer, changes) = ca.new_root(now + Duration::from_secs(1), true)?;
        ca.apply(&changes);
        ca.activate(signer);
        assert_ne!(ca.active_id(), first);
        assert_eq!(ca.mtls().trust_bundle.len(), 2);
        let roots = ca.roots(now);
        assert_eq!(
            roots.iter().map(|r| r.active).collect::<Vec<_>>(),
            [false, true]
        );

        // The old root still has a leaf: refused, unless forced; the active one never goes.
        assert!(matches!(
            ca.plan_drop(&first, false, now),
            Err(DropRefusal::InUse { count: 1, .. })
        ));
        let active = ca.active_id().to_string();
        assert!(matches!(
            ca.plan_drop(&active, true, now),
            Err(DropRefusal::Active(_))
        ));
        // Once the leaf has expired the old root goes without force.
        let later = now + Duration::from_secs(120);
        let (_, forced, change) = ca.plan_drop(&first, false, later)?;
        assert_eq!(forced, None);
        ca.apply(&[change]);
        assert_eq!(ca.mtls().trust_bundle.len(), 1);
        Ok(())
    }
}
