//! `shop`: the e-commerce workload that Outrigger's mesh runs beside. One binary, one
//! subcommand per service (user, catalog, inventory, payment, order), each a small JSON HTTP
//! server. The shop knows nothing of the mesh beyond forwarding trace headers and sending
//! its outbound calls to the sidecar address it is given (`--mesh`); it never depends on
//! the outrigger crates.
//!
//! This file owns the command line: it turns flags into each service's routes and fault
//! settings and hands them to `server::run`.

#![forbid(unsafe_code)]

mod catalog;
mod client;
mod faults;
mod ids;
mod inventory;
mod json;
// The same few lines as `outrigger_config::lifeline`, compiled from its one source: the shop
// must not depend on the outrigger crates.
#[path = "../../config/src/lifeline.rs"]
mod lifeline;
mod log;
mod order;
mod payment;
mod server;
mod store;
mod trace;
mod user;

use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use clap::{Args, Parser, Subcommand};

use crate::client::{MeshAddr, MeshClient};
use crate::faults::{FaultSettings, Faults};
use crate::server::Identity;

#[derive(Parser)]
#[command(
    name = "shop",
    version,
    about = "The shop's e-commerce services (one per subcommand)"
)]
struct Cli {
    #[command(subcommand)]
    service: Service,
}

#[derive(Subcommand)]
enum Service {
    /// Accounts: POST /register, POST /login, GET /profile
    User(Common),
    /// Products: GET /products, GET /products/{id}
    Catalog(Common),
    /// Stock: GET /stock/{product_id}, POST /reserve, POST /release
    Inventory(InventoryArgs),
    /// Idempotent charges: POST /charge (Idempotency-Key header)
    Payment(PaymentArgs),
    /// Orders: POST /orders, GET /orders/{id}; calls the others through the mesh
    Order(OrderArgs),
}

/// Flags every service takes.
#[derive(Args)]
struct Common {
    /// Address to listen on (`127.0.0.1:0` picks a free port; the startup log line names it).
    /// Default: 127.0.0.1 and the service's port (user 8081, catalog 8082, inventory 8083,
    /// payment 8084, order 8085).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Version label reported by /healthz and the startup line. For payment, `v2` is the bad
    /// canary: unless --error-rate/--latency-ms say otherwise it fails 20 % of requests
    /// and adds 30 ms.
    #[arg(long, value_name = "NAME", default_value = "v1")]
    version: String,
    /// Share of requests (0..1) answered 503 {"error":"injected"} (not /healthz, /admin/*).
    #[arg(long, value_name = "F", value_parser = faults::parse_rate)]
    error_rate: Option<f64>,
    /// Milliseconds added to every response (not /healthz, /admin/*).
    #[arg(long, value_name = "N", value_parser = faults::parse_latency)]
    latency_ms: Option<u64>,
    /// The service's SQLite database, shared by all its instances (created if missing). Without
    /// it the data lives in memory and dies with the process.
    #[arg(long, value_name = "FILE")]
    db: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct PaymentArgs {
    #[command(flatten)]
    common: Common,
    /// Test fault: die right after committing each new charge, before answering (a crash
    /// between commit and reply; the caller's retry must find the charge, not make another).
    #[arg(long)]
    crash_after_commit: bool,
}

#[derive(Args)]
struct InventoryArgs {
    #[command(flatten)]
    common: Common,
    /// Units of each product at start.
    #[arg(long, value_name = "N", default_value_t = inventory::DEFAULT_STOCK)]
    stock: u64,
}

#[derive(Args)]
struct OrderArgs {
    #[command(flatten)]
    common: Common,
    /// The sidecar's outbound listener; every call to catalog, inventory and payment goes
    /// there with Host set to the service name. `direct`: call `http://SERVICE/…` by name
    /// instead, for a pod whose rules send every connection to the sidecar.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:15001", value_parser = MeshAddr::parse)]
    mesh: MeshAddr,
    /// Deadline for each call to another service, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    call_timeout_ms: u64,
}

impl Common {
    /// The fault settings to start with: the flags, else the service's defaults.
    fn faults(&self, defaults: FaultSettings) -> FaultSettings {
        FaultSettings {
            error_rate: self.error_rate.unwrap_or(defaults.error_rate),
            latency_ms: self.latency_ms.unwrap_or(defaults.latency_ms),
        }
    }
}

const NO_FAULTS: FaultSettings = FaultSettings {
    error_rate: 0.0,
    latency_ms: 0,
};

#[tokio::main]
async fn main() -> ExitCode {
    if let Err(e) = lifeline::die_with_parent() {
        eprintln!("shop: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let built = build(cli.service);
    let (service, common, (routes, admin), default_faults, default_port) = match built {
        Ok(b) => b,
        Err((service, e)) => {
            log::Logger::new(service).error(&e, None);
            return ExitCode::FAILURE;
        }
    };
    run(service, common, routes, admin, default_faults, default_port).await
}

/// A service: its name, flags, routes and admin routes, default faults and default port.
type Built = (&'static str, Common, (Router, Router), FaultSettings, u16);

/// Opens the service's database and builds its routes; the error names the service.
fn build(service: Service) -> Result<Built, (&'static str, String)> {
    let opened = |name: &'static str, common: &Common, schema: &str| {
        store::Db::open(common.db.as_deref(), schema).map_err(|e| {
            let what = common.db.as_deref().map_or_else(
                || "the in-memory database".to_string(),
                |p| p.display().to_string(),
            );
            (name, format!("opening {what}: {e}"))
        })
    };
    Ok(match service {
        Service::User(common) => {
            let db = opened(user::NAME, &common, user::SCHEMA)?;
            (
                user::NAME,
                common,
                (user::routes(db), Router::new()),
                NO_FAULTS,
                8081,
            )
        }
        Service::Catalog(common) => (
            catalog::NAME,
            common,
            (catalog::routes(), Router::new()),
            NO_FAULTS,
            8082,
        ),
        Service::Inventory(args) => {
            let db = opened(inventory::NAME, &args.common, inventory::SCHEMA)?;
            inventory::stock_up(&db, args.stock)
                .map_err(|e| (inventory::NAME, format!("stocking the inventory: {e}")))?;
            (
                inventory::NAME,
                args.common,
                (inventory::routes(db), Router::new()),
                NO_FAULTS,
                8083,
            )
        }
        Service::Payment(args) => {
            let defaults = if args.common.version == "v2" {
                payment::V2_DEFAULT_FAULTS
            } else {
                NO_FAULTS
            };
            let db = opened(payment::NAME, &args.common, payment::SCHEMA)?;
            let routes = payment::routes(db, args.crash_after_commit);
            (payment::NAME, args.common, routes, defaults, 8084)
        }
        Service::Order(args) => {
            let mesh = MeshClient::new(args.mesh, Duration::from_millis(args.call_timeout_ms));
            let db = opened(order::NAME, &args.common, order::SCHEMA)?;
            (
                order::NAME,
                args.common,
                order::routes(mesh, db),
                NO_FAULTS,
                8085,
            )
        }
    })
}

async fn run(
    service: &'static str,
    common: Common,
    routes: Router,
    admin: Router,
    default_faults: FaultSettings,
    default_port: u16,
) -> ExitCode {
    let listen = common
        .listen
        .clone()
        .unwrap_or_else(|| format!("127.0.0.1:{default_port}"));
    let faults = Faults::new(common.faults(default_faults));
    let identity = Identity {
        service,
        version: common.version,
    };
    match server::run(identity, &listen, faults, routes, admin).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::Logger::new(service).error(&format!("{e:#}"), None);
            ExitCode::FAILURE
        }
    }
}
