//! Bootstrap tokens: what a sidecar shows to get its first (and every later) certificate. An
//! operator mints one per service with a lifetime; the control plane keeps only its SHA-256,
//! with the service and the expiry, so a copy of the store does not hand out identities.
//!
//! A token stays valid until it expires, however often it is used: a sidecar renews its
//! certificate with the same token, so the token's lifetime bounds how long it can do so.
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
    #[error("unknown bootstrap token")]
    Unknown,
    #[error("the bootstrap token expired at {0}")]
    Expired(String),
}

/// The hash a token is stored under.
pub fn hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// A new token for `service`, valid for `ttl` from `now`.
pub fn mint(service: &str, ttl: Duration, now: SystemTime) -> Result<Minted, CaError> {
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

    /// The record of a presented token that is known and unexpired at `now`. Looking up by
    /// hash means no comparison ever runs over the secret itself.
    pub fn check(&self, presented: &str, now: SystemTime) -> Result<&TokenRecord, TokenError> {
        let record = self
            .by_hash
            .get(&hash(presented.trim()))
            .ok_or(TokenError::Unknown)?;
        if record.expired(now) {
            return Err(TokenError::Expired(
                humantime::format_rfc3339_millis(record.expires_at()).to_string(),
            ));
        }
        Ok(record)
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
        let a = mint("payment", Duration::from_secs(60), now)?;
        let b = mint("payment", Duration::from_secs(60), now)?;
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
        let minted = mint("payment", Duration::from_secs(1), clock::now())?;
        let mut tokens = Tokens::default();
        tokens.insert(minted.hash.clone(), minted.record);
        let secret = minted.secret.expose().to_string();

        let r = tokens.check(&secret, clock::now());
        assert_eq!(r.map(|r| r.service.as_str()), Ok("payment"));
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
}
