//! Where an intercepted connection was going. The init step's REDIRECT rules rewrite the
//! destination to the outbound listener; conntrack remembers the original, and
//! `SO_ORIGINAL_DST` reads it back.

use std::net::SocketAddr;
use tokio::net::TcpStream;

/// The destination the app dialled, when the connection was redirected to this listener;
/// `None` when the app dialled the listener itself (explicit use, as without interception).
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let sock = socket2::SockRef::from(stream);
    let original = match local {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    }
    // ENOENT: conntrack has no NAT entry, so nothing was redirected.
    .ok()?
    .as_socket()?;
    redirected(local, original)
}

/// A redirect changed the destination; a connection made straight to the listener reports
/// the listener's own address (when conntrack tracks it at all).
fn redirected(local: SocketAddr, original: SocketAddr) -> Option<SocketAddr> {
    (original != local).then_some(original)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_changed_destination_counts_as_redirected() {
        let listener: SocketAddr = "127.0.0.1:15001".parse().unwrap_or_else(|_| unreachable!());
        let dialled: SocketAddr = "10.96.0.10:80".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(redirected(listener, dialled), Some(dialled));
        assert_eq!(redirected(listener, listener), None);
    }

    #[tokio::test]
    async fn a_connection_made_straight_to_the_listener_is_not_intercepted() -> std::io::Result<()>
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let _client = TcpStream::connect(addr).await?;
        let (accepted, _) = listener.accept().await?;
        assert_eq!(original_dst(&accepted), None);
        Ok(())
    }
}
