//! Strict mTLS per request. The inbound listener decides a connection's security once, at
//! accept, under the snapshot in force then; a plaintext connection accepted under permissive
//! (or off) must not outlive a switch to strict. So every inbound request checks the mode of
//! the snapshot it runs on, and a plaintext one under strict is refused
//! ([`crate::error::ProxyError::MtlsRequired`]) and its connection ended.

use outrigger_config::MtlsMode;

/// Whether a request must be refused: strict is in force and it did not come over mTLS.
#[inline]
pub fn refuses(mode: MtlsMode, over_mtls: bool) -> bool {
    mode == MtlsMode::Strict && !over_mtls
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plaintext_under_strict_is_refused() {
        for mode in [MtlsMode::Off, MtlsMode::Permissive, MtlsMode::Strict] {
            assert!(!refuses(mode, true), "{mode:?} over mTLS");
            assert_eq!(refuses(mode, false), mode == MtlsMode::Strict, "{mode:?}");
        }
    }
}
