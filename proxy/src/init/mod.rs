//! `outrigger-proxy init`: programs a pod's network namespace so the app needs no change. Every
//! outbound TCP connect goes to the sidecar's outbound listener and every inbound one to its
//! inbound listener, except the proxy's own traffic (by uid), loopback, the admin port and what
//! the operator excludes. It runs once per pod, as root with NET_ADMIN, before the app starts.
//!
//! Flags follow Istio's `istio-iptables` and Linkerd's `proxy-init` (the README has the
//! mapping). The rules live in chains of their own (`OUTRIGGER_*`), so applying is idempotent and
//! `--uninstall` removes exactly what was added. Either iptables backend works (nft or legacy).

mod backend;
mod rules;

pub use backend::{Backend, Mode};
pub use rules::Rules;

use std::net::IpAddr;

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The proxy's uid: its own connections are never redirected (Istio `-u`, Linkerd
    /// `--proxy-uid`).
    #[arg(long, default_value_t = 1337)]
    pub proxy_uid: u32,
    /// The proxy's gid, excluded like the uid when given (Istio `-g`).
    #[arg(long)]
    pub proxy_gid: Option<u32>,
    /// Where outbound connections go (Istio `-p`, Linkerd `--outgoing-proxy-port`).
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    /// Where inbound connections go (Istio `-z`, Linkerd `--incoming-proxy-port`).
    #[arg(long, default_value_t = 15006)]
    pub inbound_port: u16,
    /// The sidecar's admin port, never redirected (the kubelet's probes reach it).
    #[arg(long, default_value_t = 15000)]
    pub admin_port: u16,
    /// Inbound ports left alone, comma-separated (Istio `-d`, Linkerd `--inbound-ports-to-ignore`).
    #[arg(long, value_delimiter = ',')]
    pub inbound_ports_to_ignore: Vec<u16>,
    /// Outbound ports left alone, comma-separated (Istio `-o`, Linkerd `--outbound-ports-to-ignore`).
    #[arg(long, value_delimiter = ',')]
    pub outbound_ports_to_ignore: Vec<u16>,
    /// Destinations left alone, CIDRs comma-separated (Istio `-x`, Linkerd `--subnets-to-ignore`).
    #[arg(long, value_delimiter = ',', value_parser = rules::parse_cidr)]
    pub subnets_to_ignore: Vec<(IpAddr, u8)>,
    /// Which iptables: auto (the one already holding rules, else nft if it works, else legacy),
    /// nft or legacy (Linkerd `--iptables-mode`).
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub iptables_mode: Mode,
    /// Print the rules (iptables-restore input) and change nothing (Istio `--dry-run`,
    /// Linkerd `--simulate`).
    #[arg(long)]
    pub dry_run: bool,
    /// Remove every rule and chain this added, and nothing else.
    #[arg(long)]
    pub uninstall: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0}")]
    Backend(#[from] backend::BackendError),
}

pub fn run(args: &InitArgs) -> Result<(), InitError> {
    let rules = Rules::from(args);
    if args.dry_run && !args.uninstall {
        print!(
            "{}",
            rules.restore_input(&[rules::Jump::Prerouting, rules::Jump::Output])
        );
        return Ok(());
    }
    let backend = Backend::choose(args.iptables_mode)?;
    if args.uninstall {
        if args.dry_run {
            for line in rules::uninstall_commands() {
                println!("{} {}", backend.iptables(), line.join(" "));
            }
            return Ok(());
        }
        backend.uninstall()?;
        eprintln!(
            "outrigger-proxy init: removed the OUTRIGGER_* rules ({})",
            backend.iptables()
        );
        return Ok(());
    }
    backend.apply(&rules)?;
    eprintln!(
        "outrigger-proxy init: outbound TCP -> :{}, inbound TCP -> :{} ({})",
        args.outbound_port,
        args.inbound_port,
        backend.iptables()
    );
    Ok(())
}
