//! Where other sidecars reach this one when `--advertise` is not given. An inbound listener on
//! a specific IP is its own answer. One on an unspecified IP (`0.0.0.0`, the default) is no
//! place to connect to, and loopback would send every caller on another host to itself; the
//! address of the interface the control-plane connection leaves from is the one address
//! known to route between hosts of the mesh. Without one (the control plane's name does not
//! resolve, no route to it) the sidecar falls back to loopback and says so.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};

/// The address to advertise for an inbound listener on `inbound`, given no `--advertise`.
pub fn choose(inbound: SocketAddr, control_plane: &http::Uri) -> SocketAddr {
    let (addr, warning) = choose_with(inbound, |ipv4_only| {
        source_towards(control_plane, ipv4_only)
    });
    match warning {
        Some(w) => tracing::warn!(advertise = %addr, "{w}"),
        None if inbound.ip().is_unspecified() => tracing::info!(
            advertise = %addr,
            "advertising the address of the interface towards the control plane (set --advertise to choose another)"
        ),
        None => {}
    }
    addr
}

/// [`choose`] with the route lookup given: `route(ipv4_only)` is the local IP that traffic
/// towards the control plane leaves from. Returns the address and, for a fallback, the warning.
fn choose_with(
    inbound: SocketAddr,
    route: impl FnOnce(bool) -> Result<IpAddr, String>,
) -> (SocketAddr, Option<String>) {
    if !inbound.ip().is_unspecified() {
        return (inbound, None);
    }
    // A listener on 0.0.0.0 takes IPv4 only; one on [::] takes both.
    let ipv4_only = inbound.is_ipv4();
    match route(ipv4_only) {
        Ok(ip) => (SocketAddr::new(ip, inbound.port()), None),
        Err(reason) => {
            let loopback: IpAddr = if ipv4_only {
                Ipv4Addr::LOCALHOST.into()
            } else {
                Ipv6Addr::LOCALHOST.into()
            };
            let addr = SocketAddr::new(loopback, inbound.port());
            let warning = format!(
                "--inbound {inbound} is on an unspecified IP and no --advertise was given, and the \
                 interface towards the control plane is unknown ({reason}); advertising {addr}, \
                 which only sidecars on this host can reach: set --advertise"
            );
            (addr, Some(warning))
        }
    }
}

/// The local IP a socket connected towards the control plane gets. A UDP `connect` only asks
/// the kernel for the route: nothing is sent.
fn source_towards(control_plane: &http::Uri, ipv4_only: bool) -> Result<IpAddr, String> {
    let host = control_plane
        .host()
        .ok_or_else(|| format!("the control plane URL {control_plane} has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = control_plane.port_u16().unwrap_or(443);
    let target = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {host}: {e}"))?
        .find(|a| a.is_ipv4() || !ipv4_only)
        .ok_or_else(|| format!("{host} has no IPv4 address"))?;
    let any: IpAddr = if target.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = UdpSocket::bind((any, 0)).map_err(|e| format!("a probe socket: {e}"))?;
    socket
        .connect(target)
        .map_err(|e| format!("no route to {target}: {e}"))?;
    let ip = socket
        .local_addr()
        .map_err(|e| format!("the probe socket's address: {e}"))?
        .ip();
    if ip.is_unspecified() {
        return Err(format!("no source address towards {target}"));
    }
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn a_specific_inbound_ip_is_advertised_as_is() {
        let route = |_| -> Result<IpAddr, String> { panic!("no lookup needed") };
        assert_eq!(
            choose_with(a("10.0.0.5:15006"), route),
            (a("10.0.0.5:15006"), None)
        );
    }

    #[test]
    fn an_unspecified_inbound_ip_advertises_the_interface_towards_the_control_plane() {
        let (addr, warning) = choose_with(a("0.0.0.0:15006"), |ipv4_only| {
            assert!(ipv4_only, "0.0.0.0 takes IPv4 only");
            Ok(IpAddr::from([10, 1, 2, 3]))
        });
        assert_eq!((addr, warning), (a("10.1.2.3:15006"), None));
        let (addr, _) = choose_with(a("[::]:15006"), |ipv4_only| {
            assert!(!ipv4_only, "[::] takes both families");
            Ok("fd00::7".parse().expect("ip"))
        });
        assert_eq!(addr, a("[fd00::7]:15006"));
    }

    #[test]
    fn without_a_route_it_falls_back_to_loopback_and_says_why() {
        let (addr, warning) = choose_with(a("0.0.0.0:15006"), |_| {
            Err("resolving cp.example: no such host".into())
        });
        assert_eq!(addr, a("127.0.0.1:15006"));
        let warning = warning.expect("a warning");
        assert!(
            warning.contains("resolving cp.example: no such host"),
            "{warning}"
        );
        assert!(warning.contains("set --advertise"), "{warning}");
        let (addr, _) = choose_with(a("[::]:15006"), |_| Err("x".into()));
        assert_eq!(addr, a("[::1]:15006"));
    }

    #[test]
    fn the_route_lookup_finds_the_source_address_towards_the_control_plane() {
        // Towards loopback the kernel picks loopback; this is the real lookup `choose` uses.
        let url: http::Uri = "https://127.0.0.1:15010".parse().expect("uri");
        assert_eq!(source_towards(&url, true), Ok(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(choose(a("0.0.0.0:15006"), &url), a("127.0.0.1:15006"));
        let nameless: http::Uri = "/v1/stream".parse().expect("uri");
        assert!(source_towards(&nameless, true).is_err());
    }
}
