//! Who is calling and what they may do. Every route names one [`Access`]; the caller is
//! worked out once per request from its credentials (an operator token, or the workload
//! certificate its TLS connection presented), and [`check`] says yes, 401 or 403.
//!
//! Roles, narrowest first: a **workload** (a sidecar's certificate for one service) may read
//! its own service's snapshot and keep its own registry entries and identity; a **reader**
//! token may GET; an **admin** token may do everything. A bootstrap token is not a caller:
//! only the certificate route looks at it.

use crate::auth::{bearer, Token};
use http::HeaderMap;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health and readiness: kubelets and load balancers carry no credentials.
    Public,
    /// GETs: a reader or admin token.
    Read,
    /// Changes: the admin token.
    Admin,
    /// A sidecar's own business: its workload certificate (the handler holds it to its
    /// service), or the admin token.
    Workload,
    /// Certificate signing: a bootstrap token (checked by the handler), a workload
    /// certificate (renewal), or the admin token.
    Certificate,
}

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Reader,
    /// A verified client certificate naming this service.
    Workload(String),
    /// No operator token and no workload certificate. `bearer` says whether some bearer
    /// credential came (a bootstrap token, or a wrong token).
    Anonymous {
        bearer: bool,
    },
}

/// The operator tokens the control plane knows.
#[derive(Debug)]
pub struct OperatorTokens {
    pub admin: Token,
    pub reader: Option<Token>,
}

impl Caller {
    /// An admin or reader token outranks a certificate: operators may hold both.
    pub fn identify(tokens: &OperatorTokens, headers: &HeaderMap, workload: Option<&str>) -> Self {
        if tokens.admin.authorizes(headers) {
            return Caller::Admin;
        }
        if tokens
            .reader
            .as_ref()
            .is_some_and(|r| r.authorizes(headers))
        {
            return Caller::Reader;
        }
        match workload {
            Some(service) => Caller::Workload(service.to_string()),
            None => Caller::Anonymous {
                bearer: bearer(headers).is_some(),
            },
        }
    }

    /// Whether this caller may act for `service`'s sidecars.
    pub fn may_act_for(&self, service: &str) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Workload(s) => s == service,
            Caller::Reader | Caller::Anonymous { .. } => false,
        }
    }

    /// Why not, for a 403 body.
    pub fn not_for(&self, service: &str, what: &str) -> String {
        match self {
            Caller::Workload(s) => format!(
                "the workload certificate of service {s:?} may not {what} for service {service:?}"
            ),
            _ => format!("only service {service:?}'s sidecars or an admin token may {what}"),
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No credential that counts here: 401.
    Unauthenticated(String),
    /// A credential that may not do this: 403.
    Forbidden(String),
}

/// Whether `caller` may use a route needing `access`.
pub fn check(access: Access, caller: &Caller) -> Result<(), Refusal> {
    use Access as A;
    use Caller as C;
    let who = |c: &Caller| match c {
        C::Reader => "a reader token".to_string(),
        C::Workload(s) => format!("the workload certificate of service {s:?}"),
        C::Admin => "an admin token".to_string(),
        C::Anonymous { .. } => "no credential".to_string(),
    };
    match (access, caller) {
        (A::Public, _) | (_, C::Admin) => Ok(()),
        (A::Read, C::Reader) => Ok(()),
        (A::Workload | A::Certificate, C::Workload(_)) => Ok(()),
        // The handler checks the bootstrap token, and refuses without one.
        (A::Certificate, C::Anonymous { .. }) => Ok(()),
        (_, C::Anonymous { bearer: true }) => Err(Refusal::Unauthenticated(
            "unknown token: give an admin or reader token (--token-file FILE or OUTRIGGER_TOKEN)"
                .into(),
        )),
        (_, C::Anonymous { bearer: false }) => Err(Refusal::Unauthenticated(
            "a credential is needed: an operator token (Authorization: Bearer, --token-file FILE or OUTRIGGER_TOKEN) or a workload certificate".into(),
        )),
        (A::Read, c @ C::Workload(_)) => Err(Refusal::Forbidden(format!(
            "{} may not read the mesh's state: it may read only its own snapshot (GET /v1/stream)",
            who(c)
        ))),
        (A::Admin, c) => Err(Refusal::Forbidden(format!(
            "{} may not change the mesh: an admin token is needed",
            who(c)
        ))),
        (A::Workload | A::Certificate, c @ C::Reader) => Err(Refusal::Forbidden(format!(
            "{} may only read; this is for a service's own sidecars",
            who(c)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn tokens() -> OperatorTokens {
        OperatorTokens {
            admin: Token::new("admin-secret").expect("token"),
            reader: Some(Token::new("reader-secret").expect("token")),
        }
    }

    fn headers(bearer: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(b) = bearer {
            h.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {b}")).expect("header"),
            );
        }
        h
    }

    #[test]
    fn callers_are_told_apart_by_their_credentials() {
        let t = tokens();
        assert_eq!(
            Caller::identify(&t, &headers(Some("admin-secret")), Some("order")),
            Caller::Admin
        );
        assert_eq!(
            Caller::identify(&t, &headers(Some("reader-secret")), None),
            Caller::Reader
        );
        assert_eq!(
            Caller::identify(&t, &headers(Some("otb_x")), Some("order")),
            Caller::Workload("order".into())
        );
        assert_eq!(
            Caller::identify(&t, &headers(Some("otb_x")), None),
            Caller::Anonymous { bearer: true }
        );
        assert_eq!(
            Caller::identify(&t, &headers(None), None),
            Caller::Anonymous { bearer: false }
        );
    }

    #[test]
    fn each_role_gets_exactly_its_routes() {
        use Access::*;
        let w = Caller::Workload("order".into());
        let anon = Caller::Anonymous { bearer: false };
        let wrong = Caller::Anonymous { bearer: true };
        let table = [
            // (access, admin, reader, workload, anonymous)
            (Public, true, true, true, true),
            (Read, true, true, false, false),
            (Admin, true, false, false, false),
            (Workload, true, false, true, false),
            (Certificate, true, false, true, true),
        ];
        for (access, admin, reader, workload, anonymous) in table {
            assert_eq!(check(access, &Caller::Admin).is_ok(), admin, "{access:?}");
            assert_eq!(check(access, &Caller::Reader).is_ok(), reader, "{access:?}");
            assert_eq!(check(access, &w).is_ok(), workload, "{access:?}");
            assert_eq!(check(access, &anon).is_ok(), anonymous, "{access:?}");
        }
        assert!(matches!(
            check(Read, &anon),
            Err(Refusal::Unauthenticated(_))
        ));
        assert!(matches!(
            check(Admin, &wrong),
            Err(Refusal::Unauthenticated(r)) if r.contains("unknown token")
        ));
        assert!(matches!(check(Admin, &w), Err(Refusal::Forbidden(r)) if r.contains("\"order\"")));
        assert!(matches!(
            check(Admin, &Caller::Reader),
            Err(Refusal::Forbidden(_))
        ));
        assert!(matches!(
            check(Workload, &Caller::Reader),
            Err(Refusal::Forbidden(_))
        ));
    }

    #[test]
    fn a_workload_acts_only_for_its_own_service() {
        let w = Caller::Workload("order".into());
        assert!(w.may_act_for("order"));
        assert!(!w.may_act_for("payment"));
        assert!(Caller::Admin.may_act_for("payment"));
        assert!(!Caller::Reader.may_act_for("order"));
        assert!(w.not_for("payment", "register").contains("\"order\""));
    }
}
