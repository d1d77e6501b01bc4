//! Where an endpoint (or the local app) is: `HOST:PORT`, the host an IP literal or a DNS name.
//! Compose and Kubernetes address everything by name; an IP literal still needs no resolver.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// An endpoint's address as configured.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EndpointAddress {
    /// Used as it is: no resolver is involved.
    Ip(SocketAddr),
    /// Resolved by the sidecar off the request path, and again while it is configured; each
    /// address it resolves to is an endpoint of its own.
    Name(NamedAddress),
}

/// A DNS name (an RFC 1123 host name, lower-cased) and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamedAddress {
    pub host: String,
    pub port: u16,
}

/// Why a text is not an endpoint address; the config loader adds the field path and line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AddressError(String);

impl EndpointAddress {
    pub fn port(&self) -> u16 {
        match self {
            EndpointAddress::Ip(a) => a.port(),
            EndpointAddress::Name(n) => n.port,
        }
    }

    /// The address, when it needs no resolving.
    pub fn ip(&self) -> Option<SocketAddr> {
        match self {
            EndpointAddress::Ip(a) => Some(*a),
            EndpointAddress::Name(_) => None,
        }
    }

    /// The name to resolve, when it is one.
    pub fn name(&self) -> Option<&NamedAddress> {
        match self {
            EndpointAddress::Ip(_) => None,
            EndpointAddress::Name(n) => Some(n),
        }
    }
}

impl From<SocketAddr> for EndpointAddress {
    fn from(a: SocketAddr) -> Self {
        EndpointAddress::Ip(a)
    }
}

impl fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointAddress::Ip(a) => a.fmt(f),
            EndpointAddress::Name(n) => n.fmt(f),
        }
    }
}

impl fmt::Display for NamedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl FromStr for EndpointAddress {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, AddressError> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(EndpointAddress::Ip(a));
        }
        let fail = |reason: String| Err(AddressError(reason));
        if s.contains("://") {
            return fail(format!(
                "{s:?} is not a socket address: give HOST:PORT, without a scheme"
            ));
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            return fail(format!(
                "{s:?} is not a socket address: expected HOST:PORT, where HOST is an IP address or a DNS name"
            ));
        };
        if host.contains(':') || host.starts_with('[') {
            return fail(format!(
                "{s:?} is not a socket address: an IPv6 address goes in brackets, as in [::1]:8080"
            ));
        }
        let Ok(port) = port.parse::<u16>() else {
            return fail(format!(
                "{s:?} is not a socket address: the port {port:?} is not a number from 1 to 65535"
            ));
        };
        if let Err(reason) = check_host_name(host) {
            return fail(format!("{s:?}: {host:?} is not a DNS name: {reason}"));
        }
        Ok(EndpointAddress::Name(NamedAddress {
            host: host.to_ascii_lowercase(),
            port,
        }))
    }
}

/// RFC 1123 §2.1 host names: dot-separated labels of letters, digits and hyphens, 1 to 63
/// characters each, not starting or ending with a hyphen, 253 characters in all (a trailing
/// dot, which only says the name is absolute, aside). The last label may not be all digits
/// (RFC 3696 §2): `10.1.2` would be read as an IPv4 address by the system resolver.
pub fn check_host_name(host: &str) -> Result<(), String> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return Err("the host is empty".into());
    }
    if name.len() > 253 {
        return Err(format!("{} characters; at most 253", name.len()));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("it has an empty label (two dots in a row, or a leading dot)".into());
        }
        if label.len() > 63 {
            return Err(format!(
                "the label {label:?} has {} characters; at most 63",
                label.len()
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !c.is_ascii_alphanumeric() && *c != '-')
        {
            return Err(format!(
                "the label {label:?} has {c:?}; only letters, digits and '-' are allowed"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("the label {label:?} starts or ends with '-'"));
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("its last label is all digits, which reads as an IPv4 address".into());
    }
    Ok(())
}

impl Serialize for EndpointAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EndpointAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Parsed inside the deserializer's call, so an error carries the value's position.
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = EndpointAddress;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("HOST:PORT, HOST an IP address or a DNS name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EndpointAddress, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<EndpointAddress, String> {
        s.parse::<EndpointAddress>().map_err(|e| e.to_string())
    }

    fn named(host: &str, port: u16) -> EndpointAddress {
        EndpointAddress::Name(NamedAddress {
            host: host.into(),
            port,
        })
    }

    #[test]
    fn ip_literals_stay_socket_addresses() {
        let v4: SocketAddr = "127.0.0.1:8080".parse().expect("v4");
        let v6: SocketAddr = "[::1]:8080".parse().expect("v6");
        assert_eq!(parse("127.0.0.1:8080"), Ok(EndpointAddress::Ip(v4)));
        assert_eq!(parse("[::1]:8080"), Ok(EndpointAddress::Ip(v6)));
        assert_eq!(EndpointAddress::from(v6).to_string(), "[::1]:8080");
        assert_eq!(parse("[::1]:8080").map(|a| a.ip()), Ok(Some(v6)));
    }

    #[test]
    fn names_are_host_names_with_a_port() {
        assert_eq!(parse("localhost:8080"), Ok(named("localhost", 8080)));
        assert_eq!(
            parse("Payment.Shop.svc.cluster.local:80"),
            Ok(named("payment.shop.svc.cluster.local", 80)),
            "lower-cased, so one name is one resolver"
        );
        assert_eq!(
            parse("db-1.internal.:5432"),
            Ok(named("db-1.internal.", 5432))
        );
        assert_eq!(
            parse("3com.com:80"),
            Ok(named("3com.com", 80)),
            "RFC 1123 allows a leading digit"
        );
        let a = named("payment", 8080);
        assert_eq!(a.to_string(), "payment:8080");
        assert_eq!(a.port(), 8080);
        assert_eq!(a.ip(), None);
        assert_eq!(a.name().map(|n| n.host.as_str()), Some("payment"));
    }

    #[test]
    fn what_is_not_an_address_says_why() {
        let cases = [
            ("not-an-address", "expected HOST:PORT"),
            ("localhost", "expected HOST:PORT"),
            ("localhost:http", "the port \"http\" is not a number"),
            ("localhost:70000", "is not a number from 1 to 65535"),
            ("http://localhost:80", "without a scheme"),
            ("::1:80", "IPv6 address goes in brackets"),
            (":80", "the host is empty"),
            ("under_score:80", "only letters, digits and '-'"),
            ("a..b:80", "empty label"),
            ("-lead:80", "starts or ends with '-'"),
            ("trail-.x:80", "starts or ends with '-'"),
            ("10.1.2:80", "reads as an IPv4 address"),
            ("1.2.3.4.5:80", "reads as an IPv4 address"),
            ("sp ace:80", "only letters, digits and '-'"),
        ];
        for (text, reason) in cases {
            let e = parse(text).expect_err(text);
            assert!(e.contains(reason), "{text}: {e}");
        }
        let long = format!("{}.com:80", "a".repeat(64));
        assert!(parse(&long).expect_err("long label").contains("at most 63"));
        let huge = format!("{}com:80", "abcdefghi.".repeat(26));
        assert!(parse(&huge).expect_err("long name").contains("at most 253"));
        // The type error the config loader reports keeps saying what was expected.
        assert!(parse("nope")
            .expect_err("no port")
            .contains("socket address"));
    }

    #[test]
    fn serde_round_trips_as_text() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct E {
            address: EndpointAddress,
        }
        for text in ["127.0.0.1:80", "[::1]:80", "payment:8080"] {
            let json = format!("{{\"address\":\"{text}\"}}");
            let e: E = serde_json::from_str(&json).expect(text);
            assert_eq!(serde_json::to_string(&e).expect("ser"), json);
        }
        let e = serde_json::from_str::<E>("{\"address\":\"bad name:80\"}").expect_err("bad");
        assert!(e.to_string().contains("not a DNS name"), "{e}");
    }
}
