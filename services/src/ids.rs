//! Identifiers and secrets.
//!
//! Ids (orders, reservations, payments, users) only need to be unique within a demo's
//! lifetime, so they are 64 random bits from the fast non-cryptographic generator. Secrets
//! (session tokens, password salts) come from the operating system's CSPRNG, since a guessable
//! token would let anyone read a profile.

/// A prefixed id such as `ord-3f9c0a1b2c3d4e5f`. The prefix tells people reading logs what
/// kind of thing it names.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{:016x}", fastrand::u64(..))
}

/// `N` bytes from the OS CSPRNG. Fails only if the OS cannot provide randomness, which the
/// caller turns into a 500 rather than a weak secret.
pub fn secret<const N: usize>() -> Result<[u8; N], getrandom::Error> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)?;
    Ok(bytes)
}

/// Lower-case hex, for tokens and digests (a dozen lines do not need a crate).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_and_distinct() {
        let a = new_id("ord");
        let b = new_id("ord");
        assert!(a.starts_with("ord-") && a.len() == 20);
        assert_ne!(a, b);
    }

    #[test]
    fn hex_encodes() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn secrets_differ() {
        let a = secret::<16>().ok();
        let b = secret::<16>().ok();
        assert!(a.is_some());
        assert_ne!(a, b);
    }
}
