//! TLS 1.3 session tickets that outlive the process. When the control plane restarts, every
//! sidecar reconnects at once; with tickets sealed under a key kept in the data directory
//! they resume (one X25519 exchange each side) instead of paying for a full handshake (four
//! ECDSA verifications and two signatures between the two ends), which is what lets a
//! thousand of them subscribe in well under a second. Envoy offers the same through
//! `session_ticket_keys`.
//!
//! The sealing key is derived per 6-hour epoch from a 32-byte secret and from the trust
//! bundle, so tickets expire with their epoch (the previous one is still accepted) and a
//! change of roots voids every ticket: a resumed session skips certificate verification, and
//! must never carry a certificate from a root that is no longer trusted. The caller still
//! checks the resumed client certificate's validity period (`workload_service`).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long one sealing key is used; tickets of the previous epoch are still opened, so a
/// ticket lives at most twice this.
const EPOCH: Duration = Duration::from_secs(6 * 3600);
const SECRET_LEN: usize = 32;
/// The file in the data directory; as private as the CA key beside it.
pub const SECRET_FILE: &str = "session-ticket.key";
const EPOCH_LEN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    #[error("reading or writing the session ticket secret {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the system random number generator failed")]
    Random,
}

/// The secret the sealing keys come from.
#[derive(Clone)]
pub struct TicketSecret([u8; SECRET_LEN]);

impl std::fmt::Debug for TicketSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketSecret(..)")
    }
}

impl TicketSecret {
    /// The secret in `dir`, made on first start. A file of the wrong size (truncated by a
    /// full disk, say) is replaced: the only loss is that open sessions can't resume.
    pub fn load_or_create(dir: &Path) -> Result<Self, TicketError> {
        let path = dir.join(SECRET_FILE);
        let io = |source| TicketError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                if let Ok(secret) = <[u8; SECRET_LEN]>::try_from(bytes.as_slice()) {
                    return Ok(Self(secret));
                }
                tracing::warn!(file = %path.display(), "session ticket secret has the wrong size; making a new one");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let mut secret = [0u8; SECRET_LEN];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| TicketError::Random)?;
        let tmp = path.with_extension("key.tmp");
        write_private(&tmp, &secret).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(Self(secret))
    }

    #[cfg(test)]
    fn fixed(byte: u8) -> Self {
        Self([byte; SECRET_LEN])
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Seals and opens tickets for one trust bundle.
pub struct Tickets {
    prk: hkdf::Prk,
    random: SystemRandom,
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tickets(..)")
    }
}

impl Tickets {
    pub fn new(secret: &TicketSecret, bundle: &[String]) -> Self {
        // The bundle is the salt: a new set of roots is a new set of keys.
        let mut salt = Vec::new();
        for pem in bundle {
            salt.extend_from_slice(pem.trim().as_bytes());
            salt.push(0);
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &salt).extract(&secret.0);
        Self {
            prk,
            random: SystemRandom::new(),
        }
    }

    fn key(&self, epoch: u64) -> Option<LessSafeKey> {
        let epoch = epoch.to_be_bytes();
        let info = [
            b"outrigger control-plane session tickets".as_slice(),
            &epoch,
        ];
        let okm = self.prk.expand(&info, &CHACHA20_POLY1305).ok()?;
        let mut key = [0u8; 32];
        okm.fill(&mut key).ok()?;
        Some(LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, &key).ok()?,
        ))
    }

    fn seal_at(&self, epoch: u64, plain: &[u8]) -> Option<Vec<u8>> {
        let key = self.key(epoch)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(EPOCH_LEN + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        // The epoch and nonce travel in the clear and are bound to the ciphertext.
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&out[..]),
            &mut sealed,
        )
        .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn open_at(&self, now_epoch: u64, ticket: &[u8]) -> Option<Vec<u8>> {
        let (header, sealed) = ticket.split_at_checked(EPOCH_LEN + NONCE_LEN)?;
        let (epoch, nonce) = header.split_at(EPOCH_LEN);
        let epoch = u64::from_be_bytes(epoch.try_into().ok()?);
        if epoch != now_epoch && epoch.checked_add(1) != Some(now_epoch) {
            return None;
        }
        let key = self.key(epoch)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = sealed.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(header), &mut sealed)
            .ok()?;
        Some(plain.to_vec())
    }
}

fn epoch_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / EPOCH.as_secs())
}

impl rustls::server::ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        // What the client is told; the epoch check is what enforces it.
        u32::try_from(EPOCH.as_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal_at(epoch_now(), plain)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        self.open_at(epoch_now(), ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(roots: &[&str]) -> Vec<String> {
        roots.iter().map(|r| r.to_string()).collect()
    }

    #[test]
    fn a_ticket_opens_after_a_restart_with_the_same_secret_and_roots() {
        let secret = TicketSecret::fixed(7);
        let sealed = Tickets::new(&secret, &bundle(&["root-a"])).seal_at(100, b"session");
        let sealed = sealed.unwrap_or_default();
        assert!(
            !sealed.windows(7).any(|w| w == b"session"),
            "sealed, not encoded"
        );
        let restarted = Tickets::new(&secret, &bundle(&["root-a"]));
        assert_eq!(
            restarted.open_at(100, &sealed).as_deref(),
            Some(&b"session"[..])
        );
        assert_eq!(
            restarted.open_at(101, &sealed).as_deref(),
            Some(&b"session"[..]),
            "the previous epoch is still accepted"
        );
    }

    #[test]
    fn expired_forged_or_foreign_tickets_do_not_open() {
        let secret = TicketSecret::fixed(7);
        let tickets = Tickets::new(&secret, &bundle(&["root-a"]));
        let sealed = tickets.seal_at(100, b"session").unwrap_or_default();
        assert_eq!(tickets.open_at(102, &sealed), None, "two epochs old");
        assert_eq!(tickets.open_at(99, &sealed), None, "from the future");

        let rerooted = Tickets::new(&secret, &bundle(&["root-a", "root-b"]));
        assert_eq!(rerooted.open_at(100, &sealed), None, "the roots changed");
        let other = Tickets::new(&TicketSecret::fixed(8), &bundle(&["root-a"]));
        assert_eq!(
            other.open_at(100, &sealed),
            None,
            "another control plane's secret"
        );

        let mut flipped = sealed.clone();
        if let Some(b) = flipped.last_mut() {
            *b ^= 1;
        }
        assert_eq!(tickets.open_at(100, &flipped), None, "tampered ciphertext");
        let mut moved = sealed.clone();
        moved[..EPOCH_LEN].copy_from_slice(&101u64.to_be_bytes());
        assert_eq!(
            tickets.open_at(101, &moved),
            None,
            "the epoch is authenticated"
        );
        assert_eq!(tickets.open_at(100, &sealed[..10]), None, "truncated");
        assert_eq!(tickets.open_at(100, &[]), None);
    }

    #[test]
    fn the_secret_is_made_once_privately_and_kept() -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let first = TicketSecret::load_or_create(dir.path())?;
        let mode = std::fs::metadata(dir.path().join(SECRET_FILE))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "no access for group or others: {mode:o}");
        let again = TicketSecret::load_or_create(dir.path())?;
        assert_eq!(first.0, again.0);
        std::fs::write(dir.path().join(SECRET_FILE), b"short")?;
        let replaced = TicketSecret::load_or_create(dir.path())?;
        assert_ne!(replaced.0, first.0);
        assert_eq!(format!("{replaced:?}"), "TicketSecret(..)", "never printed");
        Ok(())
    }
}
