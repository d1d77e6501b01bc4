//! Bootstrap tokens: what a new sidecar shows, once, to get its first certificate; from then
//! on it renews over mTLS with the certificate itself. An operator mints one per service, with
//! a lifetime (minutes by default) and optionally a number of uses; the control plane keeps
//! only its SHA-256, with the service, the expiry and the uses left, so a copy of the store
//! does not hand out identities. A token is revoked by its id (the first 16 hex digits of
//! that hash), which can be listed and shown without giving the token away.
//!
//! The tokens are 256 random bits, so a plain (fast) hash is enough to make a stored hash
//! useless to an attacker.

use super::{hex, CaError};
use crate::clock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime};

/// Marks the string as an Outrigger bootstrap token (for people and secret scanners).
const PREFIX: &str = "otb_";

/// What is stored for a token, under its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub service: String,
    /// Milliseconds since the Unix epoch: short test lifetimes need better than seconds.
    pub expires_unix_ms: u64,
    /// Certificates it may still get; `None`: any number until it expires (a Kubernetes
    /// Secret shared by a Deployment's pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses_left: Option<u32>,
}

impl TokenRecord {
    pub fn expires_at(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.expires_unix_ms)
    }

    fn expired(&self, now: SystemTime) -> bool {
        now >= self.expires_at()
    }
}

/// A token as handed out once; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A freshly minted token: the secret for the caller, the hash and record for the store.
#[derive(Debug)]
pub struct Minted {
    pub secret: Secret,
    pub hash: String,
    pub record: TokenRecord,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("unknown bootstrap token (never minted, used up, or revoked)")]
    Unknown,
    #[error("the bootstrap token expired at {0}")]
    Expired(String),
}

/// How many hex digits of the hash make a token's id.
pub const ID_LEN: usize = 16;

/// The hash a token is stored under.
pub fn hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// The id operators see for a token stored under `hash`.
pub fn id(hash: &str) -> &str {
    hash.get(..ID_LEN).unwrap_or(hash)
}

/// A token as listed: never the secret.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub service: String,
    /// RFC 3339.
    pub expires_at: String,
    pub uses_left: Option<u32>,
}

/// A new token for `service`, valid for `ttl` from `now`, for `uses` certificates (any number
/// when `None`).
pub fn mint(
    service: &str,
    ttl: Duration,
    uses: Option<u32>,
    now: SystemTime,
) -> Result<Minted, CaError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| CaError::Random(e.to_string()))?;
    let secret = format!("{PREFIX}{}", hex(&bytes));
    let expires_unix_ms = clock::unix_ms(now + ttl);
    Ok(Minted {
        hash: hash(&secret),
        secret: Secret(secret),
        record: TokenRecord {
            service: service.to_string(),
            expires_unix_ms,
            uses_left: uses,
        },
    })
}

/// The live tokens, by hash.
#[derive(Debug, Default)]
pub struct Tokens {
    by_hash: HashMap<String, TokenRecord>,
}

impl Tokens {
    pub fn from_stored(stored: impl IntoIterator<Item = (String, TokenRecord)>) -> Self {
        Self {
            by_hash: stored.into_iter().collect(),
        }
    }

    pub fn insert(&mut self, hash: String, record: TokenRecord) {
        self.by_hash.insert(hash, record);
    }

    pub fn remove(&mut self, hash: &str) {
        self.by_hash.remove(hash);
    }

    /// The hash and record of a presented token that is known, unexpired at `now` and not
    /// used up. Looking up by hash means no comparison ever runs over the secret itself.
    pub fn check(
        &self,
        presented: &str,
        now: SystemTime,
    ) -> Result<(String, &TokenRecord), TokenError> {
        let h = hash(presented.trim());
        let record = self.by_hash.get(&h).ok_or(TokenError::Unknown)?;
        if record.expired(now) {
            return Err(TokenError::Expired(
                humantime::format_rfc3339_millis(record.expires_at()).to_string(),
            ));
        }
        if record.uses_left == Some(0) {
            return Err(TokenError::Unknown);
        }
        Ok((h, record))
    }

    /// The hash of the token whose id is `id`.
    pub fn by_id(&self, id: &str) -> Option<String> {
        if id.len() != ID_LEN {
            return None;
        }
        self.by_hash.keys().find(|h| self::id(h) == id).cloned()
    }

    /// The live tokens, soonest to expire first.
    pub fn list(&self, now: SystemTime) -> Vec<TokenInfo> {
        let mut out: Vec<(&String, &TokenRecord)> = self
            .by_hash
            .iter()
            .filter(|(_, r)| !r.expired(now) && r.uses_left != Some(0))
            .collect();
        out.sort_by_key(|(h, r)| (r.expires_unix_ms, *h));
        out.into_iter()
            .map(|(h, r)| TokenInfo {
                id: id(h).to_string(),
                service: r.service.clone(),
                expires_at: humantime::format_rfc3339_millis(r.expires_at()).to_string(),
                uses_left: r.uses_left,
            })
            .collect()
    }

    /// Hashes of the tokens expired at `now`, to forget.
    pub fn expired(&self, now: SystemTime) -> Vec<String> {
        self.by_hash
            .iter()
            .filter(|(_, r)| r.expired(now))
            .map(|(h, _)| h.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_stored_only_as_hashes() -> Result<(), CaError> {
        let now = SystemTime::now();
        let a = mint("payment", Duration::from_secs(60), None, now)?;
        let b = mint("payment", Duration::from_secs(60), None, now)?;
        assert_ne!(a.secret, b.secret);
        let secret = a.secret.expose();
        assert!(
            secret.starts_with("otb_") && secret.len() == 4 + 64,
            "{secret}"
        );
        assert!(secret.bytes().all(|c| c.is_ascii_graphic()));
        assert_eq!(a.hash, hash(secret));
        assert_eq!(a.hash.len(), 64);
        assert!(!a.hash.contains(&secret[4..]));
        assert!(
            !format!("{a:?}").contains(secret),
            "Debug redacts the secret"
        );
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_works_until_it_expires() -> Result<(), CaError> {
        let minted = mint("payment", Duration::from_secs(1), None, clock::now())?;
        let mut tokens = Tokens::default();
        tokens.insert(minted.hash.clone(), minted.record);
        let secret = minted.secret.expose().to_string();

        let r = tokens.check(&secret, clock::now());
        assert_eq!(r.map(|(_, r)| r.service.as_str()), Ok("payment"));
        assert!(
            tokens.check(&format!("{secret}\n"), clock::now()).is_ok(),
            "a final newline from a token file is not part of the token"
        );
        assert_eq!(
            tokens.check("otb_0000", clock::now()).err(),
            Some(TokenError::Unknown)
        );
        assert!(tokens.expired(clock::now()).is_empty());

        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(tokens.check(&secret, clock::now()).is_ok(), "still valid");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let expired = tokens.check(&secret, clock::now());
        assert!(
            matches!(&expired, Err(TokenError::Expired(at)) if at.ends_with('Z')),
            "{expired:?}"
        );
        assert_eq!(
            tokens.expired(clock::now()),
            std::slice::from_ref(&minted.hash)
        );
        tokens.remove(&minted.hash);
        assert!(tokens.is_empty());
        Ok(())
    }

    #[test]
    fn a_used_up_or_revoked_token_is_refused_and_ids_never_show_the_secret() -> Result<(), CaError>
    {
        let now = SystemTime::now();
        let minted = mint("payment", Duration::from_secs(60), Some(1), now)?;
        let secret = minted.secret.expose().to_string();
        let mut tokens = Tokens::default();
        tokens.insert(minted.hash.clone(), minted.record.clone());
        let listed = tokens.list(now);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].uses_left, Some(1));
        assert!(!secret.contains(&listed[0].id), "the id is of the hash");
        assert_eq!(tokens.by_id(&listed[0].id), Some(minted.hash.clone()));
        assert_eq!(tokens.by_id("short"), None);

        assert!(tokens.check(&secret, now).is_ok());
        // The one use spent:
        tokens.insert(
            minted.hash.clone(),
            TokenRecord {
                uses_left: Some(0),
                ..minted.record.clone()
            },
        );
        assert_eq!(tokens.check(&secret, now).err(), Some(TokenError::Unknown));
        assert!(tokens.list(now).is_empty());
        // Revoked: gone.
        tokens.remove(&minted.hash);
        assert_eq!(tokens.check(&secret, now).err(), Some(TokenError::Unknown));
        Ok(())
    }
}
