//! Route rules compiled from config: exact path, path prefix, methods and header values.

use http::{HeaderName, HeaderValue, Method};
use outrigger_config::RouteMatch;

#[derive(Debug, Default)]
pub struct RouteMatcher {
    path_exact: Option<Box<str>>,
    path_prefix: Option<Box<str>>,
    methods: Box<[Method]>,
    headers: Box<[(HeaderName, HeaderValue)]>,
}

impl RouteMatcher {
    /// Compiles a validated match; names and values that passed validation always parse.
    pub fn compile(m: &RouteMatch) -> Self {
        Self {
            path_exact: m.path_exact.as_deref().map(Into::into),
            path_prefix: m.path_prefix.as_deref().map(Into::into),
            methods: m
                .methods
                .iter()
                .filter_map(|x| Method::from_bytes(x.as_bytes()).ok())
                .collect(),
            headers: m
                .headers
                .iter()
                .filter_map(|h| {
                    Some((
                        HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                        HeaderValue::from_str(&h.value).ok()?,
                    ))
                })
                .collect(),
        }
    }

    pub fn matches(&self, method: &Method, path: &str, headers: &http::HeaderMap) -> bool {
        if let Some(p) = &self.path_exact {
            if path != &**p {
                return false;
            }
        }
        if let Some(p) = &self.path_prefix {
            if !path.starts_with(&**p) {
                return false;
            }
        }
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        self.headers
            .iter()
            .all(|(n, v)| headers.get_all(n).iter().any(|x| x == v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrigger_config::HeaderMatch;

    #[test]
    fn every_condition_must_hold() {
        let m = RouteMatcher::compile(&RouteMatch {
            path_prefix: Some("/charge".into()),
            path_exact: None,
            methods: vec!["POST".into()],
            headers: vec![HeaderMatch {
                name: "x-canary".into(),
                value: "always".into(),
            }],
        });
        let mut h = http::HeaderMap::new();
        assert!(!m.matches(&Method::POST, "/charge/1", &h));
        h.insert("x-canary", HeaderValue::from_static("always"));
        assert!(m.matches(&Method::POST, "/charge/1", &h));
        assert!(!m.matches(&Method::GET, "/charge/1", &h));
        assert!(!m.matches(&Method::POST, "/refund", &h));
        assert!(RouteMatcher::default().matches(&Method::GET, "/", &http::HeaderMap::new()));
    }
}
