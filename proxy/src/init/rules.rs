//! The nat rules, as `iptables-restore` input: pure, so every exclusion is unit-tested.

use super::InitArgs;
use std::fmt::Write;
use std::net::IpAddr;

pub const INBOUND: &str = "OUTRIGGER_INBOUND";
pub const IN_REDIRECT: &str = "OUTRIGGER_IN_REDIRECT";
pub const OUTPUT: &str = "OUTRIGGER_OUTPUT";
pub const REDIRECT: &str = "OUTRIGGER_REDIRECT";
pub const CHAINS: [&str; 4] = [INBOUND, IN_REDIRECT, OUTPUT, REDIRECT];

/// The jumps from the built-in chains into ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jump {
    Prerouting,
    Output,
}

impl Jump {
    /// The rule, as `iptables -t nat` arguments after `-A`/`-C`/`-D`.
    pub fn rule(self) -> [&'static str; 5] {
        match self {
            Jump::Prerouting => ["PREROUTING", "-p", "tcp", "-j", INBOUND],
            Jump::Output => ["OUTPUT", "-p", "tcp", "-j", OUTPUT],
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub proxy_uid: u32,
    pub proxy_gid: Option<u32>,
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub admin_port: u16,
    pub inbound_ignore: Vec<u16>,
    pub outbound_ignore: Vec<u16>,
    pub subnets_ignore: Vec<(IpAddr, u8)>,
}

impl From<&InitArgs> for Rules {
    fn from(a: &InitArgs) -> Self {
        Self {
            proxy_uid: a.proxy_uid,
            proxy_gid: a.proxy_gid,
            outbound_port: a.outbound_port,
            inbound_port: a.inbound_port,
            admin_port: a.admin_port,
            inbound_ignore: a.inbound_ports_to_ignore.clone(),
            outbound_ignore: a.outbound_ports_to_ignore.clone(),
            subnets_ignore: a.subnets_to_ignore.clone(),
        }
    }
}

/// `ADDR/LEN` (or a bare address, a /32 or /128).
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (ip, len) = s.split_once('/').unwrap_or((s, ""));
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("{s:?}: not an IP address or CIDR"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = if len.is_empty() {
        max
    } else {
        len.parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?
    };
    Ok((ip, len))
}

impl Rules {
    /// The chains, flushed and filled, and the given jumps (only those not already there, so
    /// a second run adds nothing).
    pub fn restore_input(&self, jumps: &[Jump]) -> String {
        let mut out = String::from("*nat\n");
        for c in CHAINS {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        // Inbound: the sidecar's own ports and the ignored ones pass; the rest go to inbound.
        let mut inbound_pass = vec![self.admin_port, self.inbound_port, self.outbound_port];
        inbound_pass.extend(&self.inbound_ignore);
        inbound_pass.dedup();
        for p in inbound_pass {
            let _ = writeln!(out, "-A {INBOUND} -p tcp --dport {p} -j RETURN");
        }
        let _ = writeln!(out, "-A {INBOUND} -p tcp -j {IN_REDIRECT}");
        let _ = writeln!(
            out,
            "-A {IN_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
            self.inbound_port
        );
        // Outbound: the proxy's own connections, loopback and the ignored pass.
        let _ = writeln!(
            out,
            "-A {OUTPUT} -m owner --uid-owner {} -j RETURN",
            self.proxy_uid
        );
        if let Some(g) = self.proxy_gid {
            let _ = writeln!(out, "-A {OUTPUT} -m owner --gid-owner {g} -j RETURN");
        }
        let _ = writeln!(out, "-A {OUTPUT} -d 127.0.0.1/32 -j RETURN");
        for p in &self.outbound_ignore {
            let _ = writeln!(out, "-A {OUTPUT} -p tcp --dport {p} -j RETURN");
        }
        for (ip, len) in self.subnets_ignore.iter().filter(|(ip, _)| ip.is_ipv4()) {
            let _ = writeln!(out, "-A {OUTPUT} -d {ip}/{len} -j RETURN");
        }
        let _ = writeln!(out, "-A {OUTPUT} -p tcp -j {REDIRECT}");
        let _ = writeln!(
            out,
            "-A {REDIRECT} -p tcp -j REDIRECT --to-ports {}",
            self.outbound_port
        );
        for j in jumps {
            let _ = writeln!(out, "-A {}", j.rule().join(" "));
        }
        out.push_str("COMMIT\n");
        out
    }
}

/// What `--uninstall` runs, as `iptables` arguments: the jumps out, then our chains emptied
/// and deleted.
pub fn uninstall_commands() -> Vec<Vec<String>> {
    let mut cmds = Vec::new();
    for j in [Jump::Prerouting, Jump::Output] {
        let mut c = vec!["-t".to_string(), "nat".into(), "-D".into()];
        c.extend(j.rule().iter().map(|s| s.to_string()));
        cmds.push(c);
    }
    for flag in ["-F", "-X"] {
        for chain in CHAINS {
            cmds.push(vec!["-t".into(), "nat".into(), flag.into(), chain.into()]);
        }
    }
    cmds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            proxy_uid: 1337,
            proxy_gid: None,
            outbound_port: 15001,
            inbound_port: 15006,
            admin_port: 15000,
            inbound_ignore: vec![],
            outbound_ignore: vec![],
            subnets_ignore: vec![],
        }
    }

    #[test]
    fn the_defaults_exclude_the_proxy_uid_loopback_and_the_sidecars_ports() {
        let text = rules().restore_input(&[Jump::Prerouting, Jump::Output]);
        for line in [
            "-A OUTRIGGER_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A OUTRIGGER_OUTPUT -d 127.0.0.1/32 -j RETURN",
            "-A OUTRIGGER_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
            "-A OUTRIGGER_INBOUND -p tcp --dport 15000 -j RETURN",
            "-A OUTRIGGER_INBOUND -p tcp --dport 15006 -j RETURN",
            "-A OUTRIGGER_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            "-A PREROUTING -p tcp -j OUTRIGGER_INBOUND",
            "-A OUTPUT -p tcp -j OUTRIGGER_OUTPUT",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // The uid exclusion comes before the redirect, or the proxy would loop into itself.
        let uid = text.find("--uid-owner").unwrap_or(usize::MAX);
        let redirect = text.find("-j OUTRIGGER_REDIRECT").unwrap_or(0);
        assert!(uid < redirect);
        assert!(text.starts_with("*nat\n") && text.ends_with("COMMIT\n"));
    }

    #[test]
    fn exclusions_are_returns_and_jumps_already_there_are_not_added_again() {
        let r = Rules {
            proxy_gid: Some(1337),
            inbound_ignore: vec![22],
            outbound_ignore: vec![5432, 3306],
            subnets_ignore: vec![parse_cidr("10.96.0.0/12").unwrap_or_else(|e| panic!("{e}"))],
            ..rules()
        };
        let text = r.restore_input(&[]);
        for line in [
            "-A OUTRIGGER_OUTPUT -m owner --gid-owner 1337 -j RETURN",
            "-A OUTRIGGER_INBOUND -p tcp --dport 22 -j RETURN",
            "-A OUTRIGGER_OUTPUT -p tcp --dport 5432 -j RETURN",
            "-A OUTRIGGER_OUTPUT -p tcp --dport 3306 -j RETURN",
            "-A OUTRIGGER_OUTPUT -d 10.96.0.0/12 -j RETURN",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("-A PREROUTING") && !text.contains("-A OUTPUT -p"));
    }

    #[test]
    fn cidrs_are_checked() {
        assert_eq!(
            parse_cidr("10.0.0.1"),
            Ok(("10.0.0.1".parse().unwrap_or_else(|_| unreachable!()), 32))
        );
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nope/8").is_err());
    }
}
