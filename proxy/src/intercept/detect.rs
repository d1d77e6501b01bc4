//! Protocol detection on an intercepted connection: HTTP/1, h2c (the prior-knowledge
//! preface), TLS (with the SNI it asks for) or anything else, which is opaque TCP.
//!
//! The client speaks first in every protocol told apart here, so detection decides as soon
//! as the first bytes say enough, usually the first segment. It waits for them at most
//! `timeout`: a server-first protocol (MySQL, SMTP) on a port not marked opaque says nothing
//! until the server does, and is taken as opaque once the wait runs out. Linkerd waits 10 s
//! there; hundreds of milliseconds is the whole cost here.

use bytes::{Bytes, BytesMut};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// The bytes a TLS ClientHello may take before detection stops reading: a record is at most
/// 16 KiB, and a hello with post-quantum key shares is still far below.
const MAX_PREFIX: usize = 16 * 1024 + 5;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Request methods, each with the space after it: a match is HTTP/1.
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    H2c,
    /// The server name the ClientHello asks for, when it names one.
    Tls {
        sni: Option<String>,
    },
    Opaque,
}

impl Protocol {
    /// For metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2c => "h2c",
            Protocol::Tls { .. } => "tls",
            Protocol::Opaque => "opaque",
        }
    }

    pub fn is_http(&self) -> bool {
        matches!(self, Protocol::Http1 | Protocol::H2c)
    }
}

/// What detection found, and the bytes it read, to be replayed before the rest.
#[derive(Debug)]
pub struct Detected {
    pub protocol: Protocol,
    pub prefix: Bytes,
    /// Detection ran out of time rather than deciding.
    pub timed_out: bool,
}

/// Reads until the first bytes tell the protocol, the stream ends, or `timeout` passes.
pub async fn detect<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
) -> std::io::Result<Detected> {
    let deadline = Instant::now() + timeout;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if let Some(protocol) = classify(&buf) {
            return Ok(found(protocol, buf, false));
        }
        if buf.len() >= MAX_PREFIX {
            // Only a TLS hello can be this long undecided.
            let protocol = tls_or_opaque(&buf);
            return Ok(found(protocol, buf, false));
        }
        buf.reserve(1024);
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(0)) => {
                let protocol = settle(&buf);
                return Ok(found(protocol, buf, false));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                let protocol = settle(&buf);
                return Ok(found(protocol, buf, true));
            }
        }
    }
}

/// [`detect`], unless the port is marked opaque: then no byte is read and no time spent.
pub async fn detect_unless_opaque<I: AsyncRead + Unpin>(
    io: &mut I,
    opaque: bool,
    timeout: Duration,
) -> std::io::Result<(Protocol, Bytes)> {
    if opaque {
        return Ok((Protocol::Opaque, Bytes::new()));
    }
    detect(io, timeout).await.map(|d| (d.protocol, d.prefix))
}

fn found(protocol: Protocol, buf: BytesMut, timed_out: bool) -> Detected {
    Detected {
        protocol,
        prefix: buf.freeze(),
        timed_out,
    }
}

/// The protocol, once these first bytes decide it; `None` while they are a prefix of more
/// than one answer.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    let first = *buf.first()?;
    if first == 0x16 {
        return tls_hello(buf);
    }
    if buf.len() >= H2_PREFACE.len() && buf.starts_with(H2_PREFACE) {
        return Some(Protocol::H2c);
    }
    if METHODS.iter().any(|m| buf.starts_with(m)) {
        return Some(Protocol::Http1);
    }
    let undecided = H2_PREFACE.starts_with(buf)
        || METHODS
            .iter()
            .any(|m| m.len() > buf.len() && m.starts_with(buf));
    if undecided {
        None
    } else {
        Some(Protocol::Opaque)
    }
}

/// What partial bytes are taken for when no more will come in time.
fn settle(buf: &[u8]) -> Protocol {
    classify(buf).unwrap_or_else(|| tls_or_opaque(buf))
}

fn tls_or_opaque(buf: &[u8]) -> Protocol {
    match buf.first() {
        Some(0x16) => Protocol::Tls { sni: None },
        _ => Protocol::Opaque,
    }
}

/// A TLS ClientHello, parsed by rustls far enough to read its SNI; `None` while incomplete.
fn tls_hello(buf: &[u8]) -> Option<Protocol> {
    // A record header: type 22, then a legacy version 3.x.
    if buf.len() >= 2 && buf[1] != 0x03 {
        return Some(Protocol::Opaque);
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rd = buf;
    if acceptor.read_tls(&mut rd).is_err() {
        return Some(Protocol::Tls { sni: None });
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => Some(Protocol::Tls {
            sni: accepted.client_hello().server_name().map(str::to_string),
        }),
        Ok(None) => None,
        // Not a hello rustls can read (an old version, say): still TLS, passed through.
        Err(_) => Some(Protocol::Tls { sni: None }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn detect_bytes(chunks: &[&[u8]], close: bool) -> Detected {
        let (mut far, mut near) = tokio::io::duplex(64 * 1024);
        for c in chunks {
            far.write_all(c).await.unwrap_or_else(|e| panic!("{e}"));
        }
        let _open = if close {
            drop(far);
            None
        } else {
            Some(far)
        };
        detect(&mut near, Duration::from_millis(300))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn client_hello(name: &str) -> Vec<u8> {
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| panic!("{e}"))
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(name.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap_or_else(|e| panic!("{e}"));
        out
    }

    #[tokio::test(start_paused = true)]
    async fn http1_is_told_from_its_method_even_split_over_reads() {
        let d = detect_bytes(&[b"GET / HTTP/1.1\r\nHost: payment\r\n\r\n"], false).await;
        assert_eq!(d.protocol, Protocol::Http1);
        assert!(!d.timed_out);
        assert_eq!(&d.prefix[..3], b"GET");

        let (mut far, mut near) = tokio::io::duplex(1024);
        let detecting = tokio::spawn(async move {
            detect(&mut near, Duration::from_millis(300))
                .await
                .map(|d| d.protocol)
        });
        far.write_all(b"PO").await.unwrap_or_else(|e| panic!("{e}"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        far.write_all(b"ST /orders HTTP/1.1\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let got = detecting.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.ok(), Some(Protocol::Http1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_h2_preface_is_h2c() {
        let d = detect_bytes(&[H2_PREFACE, b"\x00\x00\x00\x04"], false).await;
        assert_eq!(d.protocol, Protocol::H2c);
        // "PRI" alone could still be either: it waits, and settles at the deadline.
        let started = Instant::now();
        let d = detect_bytes(&[b"PRI * HTTP/2.0"], false).await;
        assert_eq!(d.protocol, Protocol::Opaque);
        assert!(d.timed_out);
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn tls_is_told_with_its_server_name() {
        let hello = client_hello("db.shop.svc.cluster.local");
        let d = detect_bytes(&[&hello], false).await;
        assert_eq!(
            d.protocol,
            Protocol::Tls {
                sni: Some("db.shop.svc.cluster.local".into())
            }
        );
        assert_eq!(&d.prefix[..], &hello[..], "every byte read is replayed");
        // A hello cut short by a closed connection is still TLS, and passes through.
        let d = detect_bytes(&[&hello[..20]], true).await;
        assert_eq!(d.protocol, Protocol::Tls { sni: None });
    }

    #[tokio::test(start_paused = true)]
    async fn anything_else_is_opaque_at_once() {
        let started = Instant::now();
        for bytes in [
            &b"\x00\x00\x00\x08\x04\xd2\x16\x2f"[..],
            b"*1\r\n$4\r\nPING\r\n",
            b"get / HTTP/1.1",
            b"\x16\x01\x00",
        ] {
            let d = detect_bytes(&[bytes], false).await;
            assert_eq!(d.protocol, Protocol::Opaque, "{bytes:?}");
        }
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "no waiting when the bytes decide"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_first_protocol_waits_only_the_timeout() {
        let started = Instant::now();
        let d = detect_bytes(&[], false).await;
        assert_eq!(d.protocol, Protocol::Opaque);
        assert!(d.timed_out);
        assert!(d.prefix.is_empty());
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        // A client that connects and closes without a byte is opaque too, at once.
        let started = Instant::now();
        let d = detect_bytes(&[], true).await;
        assert_eq!((d.protocol, d.timed_out), (Protocol::Opaque, false));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
