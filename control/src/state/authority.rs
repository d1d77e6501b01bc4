//! The CA's operations in the state task: tokens, signing, rotation. Each stores its changes
//! before the [`Authority`](crate::ca::Authority) applies them; a change of the trust bundle
//! also takes a new revision and is published, so every sidecar is pushed the new roots.

use super::{Actor, ChangeError, Handle, Request};
use crate::ca::issue::Leaf;
use crate::ca::root::{self, Signer};
use crate::ca::tokens::Secret;
use crate::ca::tokens::TokenInfo;
use crate::ca::{CaError, Credential, Issued, RootInfo, SignError};
use crate::clock;
use crate::store::ca::CaChange;
use crate::store::Change;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// A bootstrap token as minted: the only time its secret is seen.
#[derive(Debug)]
pub struct MintedToken {
    pub token: Secret,
    /// What `outrigger token revoke` takes.
    pub id: String,
    pub service: String,
    /// RFC 3339.
    pub expires_at: String,
    pub uses: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct RotateOutcome {
    pub root: RootInfo,
    /// The root that signs now: the old one until every sidecar trusts the new one.
    pub active: String,
    /// The new root while it waits for the sidecars; `None` once it signs (or with force).
    pub pending: Option<String>,
    pub revision: u64,
}

/// Which root signs and which waits, with the waiting root's certificate (to tell which
/// sidecars' acknowledged bundles hold it).
#[derive(Debug, Clone)]
pub struct CaState {
    pub active: String,
    pub pending: Option<(String, String)>,
}

#[derive(Debug, Serialize)]
pub struct DropOutcome {
    pub dropped: String,
    pub revision: u64,
    /// Unexpired leaves `force=true` dropped the root over.
    pub forced_over_leaves: usize,
}

impl Handle {
    pub async fn mint_token(
        &self,
        service: String,
        ttl: Duration,
        uses: Option<u32>,
    ) -> Result<MintedToken, ChangeError> {
        self.ask(|r| Request::MintToken(service, ttl, uses, r))
            .await
    }

    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, ChangeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Tokens(tx))
            .await
            .map_err(|_| ChangeError::Stopped)?;
        rx.await.map_err(|_| ChangeError::Stopped)
    }

    /// Revokes the bootstrap token with this id at once.
    pub async fn revoke_token(&self, id: String) -> Result<(), ChangeError> {
        self.ask(|r| Request::RevokeToken(id, r)).await
    }

    /// Signs a CSR as far as `credential` allows.
    pub async fn sign(&self, credential: Credential, csr: String) -> Result<Issued, SignError> {
        let (tx, rx) = oneshot::channel();
        let stopped = || SignError::Stopped;
        self.tx
            .send(Request::Sign(credential, csr, tx))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    pub async fn roots(&self) -> Result<Vec<RootInfo>, ChangeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Roots(tx))
            .await
            .map_err(|_| ChangeError::Stopped)?;
        rx.await.map_err(|_| ChangeError::Stopped)
    }

    pub async fn ca_state(&self) -> Result<CaState, ChangeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::CaState(tx))
            .await
            .map_err(|_| ChangeError::Stopped)?;
        rx.await.map_err(|_| ChangeError::Stopped)
    }

    /// A new root: pending until every sidecar trusts it, or the signer at once with `force`.
    pub async fn rotate(&self, force: bool) -> Result<RotateOutcome, ChangeError> {
        self.ask(|r| Request::Rotate(force, r)).await
    }

    /// Makes root `id` the signer if it is still the pending one; whether it did.
    pub async fn activate(&self, id: String) -> Result<bool, ChangeError> {
        self.ask(|r| Request::Activate(id, r)).await
    }

    /// A serving certificate for the control plane's own `key`.
    pub async fn server_certificate(
        &self,
        key: rcgen::KeyPair,
        names: Vec<rcgen::SanType>,
        lifetime: Duration,
    ) -> Result<(rcgen::KeyPair, Leaf), CaError> {
        let (tx, rx) = oneshot::channel();
        let stopped = || CaError::Random("the control plane is shutting down".into());
        self.tx
            .send(Request::ServerCert(Box::new(key), names, lifetime, tx))
            .await
            .map_err(|_| stopped())?;
        let (key, leaf) = rx.await.map_err(|_| stopped())??;
        Ok((*key, leaf))
    }

    pub async fn drop_root(&self, id: String, force: bool) -> Result<DropOutcome, ChangeError> {
        self.ask(|r| Request::DropRoot(id, force, r)).await
    }
}

impl Actor {
    pub(super) async fn mint_token(
        &mut self,
        service: &str,
        ttl: Duration,
        uses: Option<u32>,
    ) -> Result<MintedToken, ChangeError> {
        let (minted, changes) = self.ca.mint_token(service, ttl, uses, clock::now())?;
        self.store_ca(&changes).await?;
        self.ca.apply(&changes);
        Ok(MintedToken {
            expires_at: humantime::format_rfc3339_millis(minted.record.expires_at()).to_string(),
            id: crate::ca::tokens::id(&minted.hash).to_string(),
            service: minted.record.service,
            uses: minted.record.uses_left,
            token: minted.secret,
        })
    }

    pub(super) async fn revoke_token(&mut self, id: &str) -> Result<(), ChangeError> {
        let change = self.ca.revoke_token(id).ok_or_else(|| {
            ChangeError::Missing(format!("no live bootstrap token has id {id:?}"))
        })?;
        let changes = [change];
        self.store_ca(&changes).await?;
        self.ca.apply(&changes);
        tracing::info!(token_id = %id, "bootstrap token revoked");
        Ok(())
    }

    pub(super) fn ca_state(&self) -> CaState {
        CaState {
            active: self.ca.active_id().to_string(),
            pending: self
                .ca
                .pending()
                .map(|r| (r.id.clone(), r.cert_pem.clone())),
        }
    }

    pub(super) async fn sign(
        &mut self,
        credential: &Credential,
        csr: &str,
    ) -> Result<Issued, SignError> {
        let (issued, changes) = self.ca.sign(credential, csr, clock::now())?;
        // A leaf that is not recorded could be left behind by a root drop: none is handed out.
        self.store_ca(&changes).await?;
        self.ca.apply(&changes);
        Ok(issued)
    }

    pub(super) async fn rotate(&mut self, force: bool) -> Result<RotateOutcome, ChangeError> {
        if let (Some(p), false) = (self.ca.pending(), force) {
            return Err(ChangeError::Conflict(format!(
                "root {} is still waiting for every sidecar to trust it (outrigger ca status); \
                 rotate again once it signs, or with force=true",
                p.id
            )));
        }
        let now = clock::now();
        let (signer, changes) = self.ca.new_root(now, force)?;
        let record = signer.record.clone();
        match self.bundle_changed(changes, force.then_some(signer)).await {
            Ok(revision) => {
                let root = self
                    .ca
                    .roots(now)
                    .into_iter()
                    .find(|r| r.id == record.id)
                    .ok_or_else(|| ChangeError::Missing(format!("root {} vanished", record.id)))?;
                if force {
                    tracing::warn!(root = %record.id, revision, "CA root rotated by force: new leaves are signed by the new root before every sidecar trusts it");
                } else {
                    tracing::info!(root = %record.id, revision, "CA root added to the trust bundle; it signs once every connected sidecar trusts it");
                }
                Ok(RotateOutcome {
                    root,
                    active: self.ca.active_id().to_string(),
                    pending: self.ca.pending().map(|r| r.id.clone()),
                    revision,
                })
            }
            Err(e) => {
                // Not stored, so not trusted: its key must not linger.
                root::remove_files(&record);
                Err(e)
            }
        }
    }

    pub(super) async fn drop_root(
        &mut self,
        id: &str,
        force: bool,
    ) -> Result<DropOutcome, ChangeError> {
        use crate::ca::rotation::DropRefusal;
        let (record, forced, change) =
            self.ca
                .plan_drop(id, force, clock::now())
                .map_err(|e| match e {
                    DropRefusal::Unknown(_) => ChangeError::Missing(e.to_string()),
                    DropRefusal::Active(_) | DropRefusal::InUse { .. } => {
                        ChangeError::Conflict(e.to_string())
                    }
                })?;
        let revision = self.bundle_changed(vec![change], None).await?;
        root::remove_files(&record);
        match forced {
            Some(u) => tracing::warn!(
                root = %id,
                unexpired_leaves = u.count,
                last_expires_at = %clock::rfc3339(u.last_not_after),
                revision,
                "CA root dropped by force: sidecars holding its leaves fail mTLS until they renew"
            ),
            None => tracing::info!(root = %id, revision, "CA root dropped"),
        }
        Ok(DropOutcome {
            dropped: id.to_string(),
            revision,
            forced_over_leaves: forced.map_or(0, |u| u.count),
        })
    }

    pub(super) async fn activate(&mut self, id: &str) -> Result<bool, ChangeError> {
        if self.ca.pending().map(|r| r.id.as_str()) != Some(id) {
            return Ok(false);
        }
        let Some((signer, changes)) = self.ca.activate_pending(clock::now())? else {
            return Ok(false);
        };
        let revision = self.bundle_changed(changes, Some(signer)).await?;
        tracing::info!(root = %id, revision, "every connected sidecar trusts the new root: it signs from now on");
        Ok(true)
    }

    /// Stores CA changes that do not touch the bundle (tokens, leaves): no new revision.
    async fn store_ca(&self, changes: &[CaChange]) -> Result<(), crate::store::StoreError> {
        let changes = changes.iter().cloned().map(Change::Ca).collect();
        self.write(changes, self.high_water).await
    }

    /// Stores a change of the roots under a new revision, applies it (making `signer` the
    /// active root, if given) and publishes the new bundle.
    async fn bundle_changed(
        &mut self,
        changes: Vec<CaChange>,
        signer: Option<Signer>,
    ) -> Result<u64, ChangeError> {
        let revision = self.revision + 1;
        let high_water = self.high_water.max(revision);
        self.write(
            changes.iter().cloned().map(Change::Ca).collect(),
            high_water,
        )
        .await?;
        self.revision = revision;
        self.high_water = high_water;
        self.ca.apply(&changes);
        if let Some(s) = signer {
            self.ca.activate(s);
        }
        self.mtls = Arc::new(self.ca.mtls());
        self.publish();
        Ok(revision)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::start_in;
    use crate::ca::tokens::TokenError;
    use rcgen::{CertificateParams, KeyPair, SanType};
    use std::time::Duration;

    fn csr(identity: &str) -> Result<String, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(identity.try_into()?)];
        params.serialize_request(&key)?.pem()
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_signs_until_it_expires() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let state = start_in(dir.path())?;
        let minted = state
            .mint_token("payment".into(), Duration::from_secs(5), None)
            .await?;
        let token = super::Credential::Token(minted.token.expose().to_string());
        let id = "spiffe://outrigger.local/service/payment";
        let issued = state.sign(token.clone(), csr(id)?).await?;
        assert_eq!(issued.identity, id);
        tokio::time::sleep(Duration::from_secs(6)).await;
        let late = state.sign(token, csr(id)?).await;
        assert!(
            matches!(late, Err(super::SignError::Token(TokenError::Expired(_)))),
            "{late:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn rotation_publishes_a_new_bundle_under_a_new_revision(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let state = start_in(dir.path())?;
        let before = state.view();
        assert_eq!(before.mtls.trust_bundle.len(), 1);
        let old = state.roots().await?[0].id.clone();

        let rotated = state.rotate(false).await?;
        let after = state.view();
        assert_eq!(after.revision, rotated.revision);
        assert!(after.revision > before.revision);
        assert_eq!(after.mtls.trust_bundle.len(), 2);
        assert!(
            !rotated.root.active && rotated.root.pending,
            "it waits for the sidecars"
        );
        assert_eq!(rotated.active, old);
        assert!(matches!(
            state.rotate(false).await,
            Err(super::ChangeError::Conflict(_))
        ));
        // The pending root is neither dropped nor passed over.
        assert!(matches!(
            state.drop_root(rotated.root.id.clone(), true).await,
            Err(super::ChangeError::Conflict(_))
        ));
        assert!(!state.activate("nope".into()).await?);
        assert!(state.activate(rotated.root.id.clone()).await?);
        let ca = state.ca_state().await?;
        assert_eq!(ca.active, rotated.root.id);
        assert!(ca.pending.is_none());

        let dropped = state.drop_root(old.clone(), false).await?;
        assert_eq!(dropped.forced_over_leaves, 0);
        assert_eq!(state.view().mtls.trust_bundle.len(), 1);
        assert!(matches!(
            state.drop_root(old, false).await,
            Err(super::ChangeError::Missing(_))
        ));
        assert!(matches!(
            state.drop_root(rotated.root.id, true).await,
            Err(super::ChangeError::Conflict(_))
        ));
        Ok(())
    }
}
