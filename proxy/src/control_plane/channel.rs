//! How the sidecar talks to the control plane, decided once at start from the flags. The
//! channel carries certificates and config, so it is TLS with the operator's trust anchors and
//! a per-workload credential; plaintext (and with it an operator token) exists only behind a
//! flag loud enough that nobody uses it by accident.

use super::secret::Secret;
use super::trust::{AnchorError, Anchors};

/// What the operator gave; secrets already read from their files or environment variables.
#[derive(Debug, Default)]
pub struct ChannelFlags {
    pub insecure_dev_plaintext: bool,
    /// `--trust-anchors` / `OUTRIGGER_TRUST_ANCHORS`: PEM text or a path.
    pub trust_anchors: Option<String>,
    pub bootstrap_token: Option<Secret>,
    pub operator_token: Option<Secret>,
}

#[derive(Debug, Clone)]
pub enum Channel {
    /// The only mode outside development. The bootstrap token gets the first certificate;
    /// every other call presents the workload certificate.
    Tls {
        anchors: Anchors,
        bootstrap_token: Secret,
    },
    /// `--insecure-dev-plaintext`: the operator token (if any) rides every call as bearer.
    Plaintext {
        operator_token: Option<Secret>,
        bootstrap_token: Option<Secret>,
    },
}

impl Channel {
    pub fn bootstrap_token(&self) -> Option<&Secret> {
        match self {
            Channel::Tls {
                bootstrap_token, ..
            } => Some(bootstrap_token),
            Channel::Plaintext {
                bootstrap_token, ..
            } => bootstrap_token.as_ref(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("--control-plane {0}: the control channel carries certificates and config, so it must be https:// (--insecure-dev-plaintext allows http:// for development only)")]
    Plaintext(String),
    #[error("--control-plane {0}: the scheme must be https://")]
    Scheme(String),
    #[error("--control-plane {0} names no host")]
    NoHost(String),
    #[error("the control plane is https, so its trust anchors are needed: give --trust-anchors FILE or OUTRIGGER_TRUST_ANCHORS (the control plane writes them to <data-dir>/trust-bundle.pem)")]
    NoAnchors,
    #[error("--trust-anchors / OUTRIGGER_TRUST_ANCHORS: {0}")]
    Anchors(#[from] AnchorError),
    #[error("the control plane is https, so the sidecar needs its bootstrap token: give --bootstrap-token-file FILE or OUTRIGGER_BOOTSTRAP_TOKEN (mint one with `outrigger token SERVICE`)")]
    NoBootstrapToken,
    #[error("--token-file / OUTRIGGER_TOKEN holds an operator token, and sidecars never hold operator tokens; give the sidecar a bootstrap token (--bootstrap-token-file) instead")]
    OperatorToken,
}

pub fn validate(url: &http::Uri, flags: ChannelFlags) -> Result<Channel, ChannelError> {
    if url.host().is_none_or(str::is_empty) {
        return Err(ChannelError::NoHost(url.to_string()));
    }
    match url.scheme_str() {
        Some("https") => {}
        Some("http") if flags.insecure_dev_plaintext => {
            return Ok(Channel::Plaintext {
                operator_token: flags.operator_token,
                bootstrap_token: flags.bootstrap_token,
            })
        }
        Some("http") => return Err(ChannelError::Plaintext(url.to_string())),
        _ => return Err(ChannelError::Scheme(url.to_string())),
    }
    if flags.operator_token.is_some() {
        return Err(ChannelError::OperatorToken);
    }
    let anchors = Anchors::load(
        flags
            .trust_anchors
            .as_deref()
            .ok_or(ChannelError::NoAnchors)?,
    )?;
    let bootstrap_token = flags
        .bootstrap_token
        .ok_or(ChannelError::NoBootstrapToken)?;
    Ok(Channel::Tls {
        anchors,
        bootstrap_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> http::Uri {
        s.parse().expect("uri")
    }

    fn full() -> ChannelFlags {
        ChannelFlags {
            insecure_dev_plaintext: false,
            trust_anchors: Some(super::super::trust::tests::ca("anchor").pem),
            bootstrap_token: Some(Secret::new("otb_x")),
            operator_token: None,
        }
    }

    #[test]
    fn https_with_anchors_and_a_bootstrap_token_is_the_channel() {
        let c = validate(&url("https://127.0.0.1:15010"), full()).expect("valid");
        assert!(matches!(c, Channel::Tls { .. }), "{c:?}");
        assert_eq!(c.bootstrap_token().map(Secret::expose), Some("otb_x"));
        // Debug shows neither the token nor the certificates' bytes.
        let shown = format!("{c:?}");
        assert!(!shown.contains("otb_x"), "{shown}");
    }

    #[test]
    fn plain_http_needs_the_dev_flag() {
        let e = validate(&url("http://127.0.0.1:15010"), full()).expect_err("plaintext");
        assert!(matches!(e, ChannelError::Plaintext(_)), "{e:?}");
        assert!(e.to_string().contains("--insecure-dev-plaintext"), "{e}");

        let dev = ChannelFlags {
            insecure_dev_plaintext: true,
            operator_token: Some(Secret::new("admin")),
            ..ChannelFlags::default()
        };
        let c = validate(&url("http://127.0.0.1:15010"), dev).expect("dev mode");
        assert!(
            matches!(&c, Channel::Plaintext { operator_token: Some(t), bootstrap_token: None } if t.expose() == "admin"),
            "{c:?}"
        );

        let e = validate(&url("ftp://127.0.0.1:15010"), full()).expect_err("scheme");
        assert!(matches!(e, ChannelError::Scheme(_)), "{e:?}");
        let e = validate(&url("/v1/stream"), full()).expect_err("no host");
        assert!(matches!(e, ChannelError::NoHost(_)), "{e:?}");
    }

    #[test]
    fn https_refuses_an_operator_token_even_with_the_dev_flag() {
        for dev in [false, true] {
            let flags = ChannelFlags {
                insecure_dev_plaintext: dev,
                operator_token: Some(Secret::new("admin")),
                ..full()
            };
            let e = validate(&url("https://127.0.0.1:15010"), flags).expect_err("operator token");
            assert!(matches!(e, ChannelError::OperatorToken), "{e:?}");
            assert!(e.to_string().contains("never hold operator tokens"), "{e}");
        }
    }

    #[test]
    fn https_needs_anchors_and_a_bootstrap_token() {
        let flags = ChannelFlags {
            trust_anchors: None,
            ..full()
        };
        let e = validate(&url("https://cp.example"), flags).expect_err("no anchors");
        assert!(matches!(e, ChannelError::NoAnchors), "{e:?}");

        let flags = ChannelFlags {
            trust_anchors: Some("/nonexistent/anchors.pem".into()),
            ..full()
        };
        let e = validate(&url("https://cp.example"), flags).expect_err("unreadable");
        assert!(
            matches!(e, ChannelError::Anchors(AnchorError::Read { .. })),
            "{e:?}"
        );

        let flags = ChannelFlags {
            bootstrap_token: None,
            ..full()
        };
        let e = validate(&url("https://cp.example"), flags).expect_err("no token");
        assert!(matches!(e, ChannelError::NoBootstrapToken), "{e:?}");
        assert!(e.to_string().contains("--bootstrap-token-file"), "{e}");
    }
}
