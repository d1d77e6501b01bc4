//! Issue 13 point 1: the shop keeps its data and charges exactly once, under `outrigger up`'s
//! own load, with the databases read back from the work directory.
//!
//! - A payment instance that commits a charge and dies before answering (`--crash-after-commit`,
//!   an abort right after the commit) costs nothing: the order's sidecar retries the charge on
//!   another instance, which finds the key in the shared ledger and answers with the same
//!   charge. Every confirmed order has exactly one charge, the one it names.
//! - An order service killed mid-saga (charges slowed to keep sagas in flight) finishes every
//!   saga when it starts again: no order is left pending or reserved, none is charged twice.

use outrigger_tests::eventually;
use outrigger_tests::up::Up;
use outrigger_tests::up_procs::{kill, running, shop_of, spawn_logged, Killed};
use std::path::Path;
use std::time::Duration;

/// Every confirmed order has one charge, the one it names, and no charge is without a
/// confirmed order. Returns (confirmed orders, charges).
fn charged_once(shop: &Path) -> (i64, i64) {
    let orders = rusqlite::Connection::open_with_flags(
        shop.join("order.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap_or_else(|e| panic!("order.db: {e}"));
    orders
        .execute(
            &format!(
                "ATTACH DATABASE '{}' AS pay",
                shop.join("payment.db").display()
            ),
            [],
        )
        .unwrap_or_else(|e| panic!("payment.db: {e}"));
    let q = |sql: &str| -> i64 {
        orders
            .query_row(sql, [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    };
    let confirmed = q("SELECT count(*) FROM orders WHERE status = 'confirmed'");
    let charges = q("SELECT count(*) FROM pay.charges");
    let mismatched = q("SELECT count(*) FROM orders o WHERE o.status = 'confirmed' AND 1 <> \
         (SELECT count(*) FROM pay.charges c WHERE c.order_id = o.order_id AND c.payment_id = o.payment_id)");
    assert_eq!(
        mismatched, 0,
        "confirmed orders whose one charge is not the one they name"
    );
    let orphans = q("SELECT count(*) FROM pay.charges c WHERE NOT EXISTS \
         (SELECT 1 FROM orders o WHERE o.order_id = c.order_id AND o.status = 'confirmed')");
    assert_eq!(
        orphans, 0,
        "charges with no confirmed order: money taken for nothing"
    );
    (confirmed, charges)
}

fn stats(addr: std::net::SocketAddr) -> serde_json::Value {
    let out = std::process::Command::new("curl")
        .args(["-sf", &format!("http://{addr}/admin/stats")])
        .output()
        .unwrap_or_else(|e| panic!("curl: {e}"));
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_charges_once_and_finishes_its_sagas_across_crashes() {
    let mut up = Up::start(&["--canary-error-rate", "0"]).await;
    let (instances, _) = shop_of(&up);
    let payment = instances
        .iter()
        .find(|i| i.service == "payment")
        .unwrap_or_else(|| panic!("no payment instance"));
    // Replace the first payment instance with one that dies right after its first commit.
    kill(payment.app.pid, "KILL");
    eventually(
        Duration::from_secs(10),
        "the old payment app to go",
        || async { (!running(payment.app.pid)).then_some(()) },
    )
    .await;
    let mut args: Vec<String> = payment.app.args.iter().skip(1).cloned().collect();
    args.push("--crash-after-commit".into());
    let log = up.logs().join("payment-crashing.log");
    let crashing: Killed = spawn_logged(Path::new(&payment.app.args[0]), &args, &log);
    // It commits one charge and aborts; the retry elsewhere replays that charge.
    let crashing_pid = crashing.0.id();
    eventually(
        Duration::from_secs(60),
        "a charge to die after its commit",
        || async { (!running(crashing_pid)).then_some(()) },
    )
    .await;
    let pay_app = instances
        .iter()
        .filter(|i| i.service == "payment")
        .nth(1)
        .unwrap_or_else(|| panic!("a second payment instance"))
        .app
        .addr("--listen");
    eventually(
        Duration::from_secs(30),
        "the retry to be answered from the ledger",
        || async { (stats(pay_app)["charges_deduplicated"].as_u64() >= Some(1)).then_some(()) },
    )
    .await;
    let (confirmed, charges) = charged_once(&up.workdir().join("data").join("shop"));
    eprintln!("{confirmed} confirmed orders, {charges} charges, after an instance died between commit and answer");
    assert!(confirmed >= 1, "no order was confirmed");

    // The same mesh: the order service dies mid-saga and comes back.
    let crashed = payment.app.pid;
    let instances: Vec<_> = instances.iter().filter(|i| i.app.pid != crashed).collect();
    // Slow charges keep sagas in flight when the order service dies.
    for p in instances.iter().filter(|i| i.service == "payment") {
        let addr = p.app.addr("--listen");
        let set = std::process::Command::new("curl")
            .args([
                "-sf",
                "-o",
                "/dev/null",
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
            ])
            .args([
                "-d",
                r#"{"latency_ms": 1500}"#,
                &format!("http://{addr}/admin/faults"),
            ])
            .status();
        assert!(set.is_ok_and(|s| s.success()), "slowing payment at {addr}");
    }
    let order = instances
        .iter()
        .find(|i| i.service == "order")
        .unwrap_or_else(|| panic!("no order instance"));
    let order_addr = order.app.addr("--listen");
    let shop = up.workdir().join("data").join("shop");
    let in_flight = |shop: &Path| -> i64 {
        let c = rusqlite::Connection::open_with_flags(
            shop.join("order.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap_or_else(|e| panic!("order.db: {e}"));
        c.query_row(
            "SELECT count(*) FROM orders WHERE status IN ('pending', 'reserved')",
            [],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    eventually(Duration::from_secs(30), "sagas in flight", || async {
        (in_flight(&shop) >= 3).then_some(())
    })
    .await;
    kill(order.app.pid, "KILL");
    eventually(Duration::from_secs(10), "the order app to die", || async {
        (!running(order.app.pid)).then_some(())
    })
    .await;
    let left = in_flight(&shop);
    assert!(left >= 1, "no saga was left unfinished by the kill");
    // Charges at full speed again, then the order service comes back on its database.
    for p in instances.iter().filter(|i| i.service == "payment") {
        let addr = p.app.addr("--listen");
        let _ = std::process::Command::new("curl")
            .args([
                "-sf",
                "-o",
                "/dev/null",
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
            ])
            .args([
                "-d",
                r#"{"latency_ms": 0}"#,
                &format!("http://{addr}/admin/faults"),
            ])
            .status();
    }
    let args: Vec<String> = order.app.args.iter().skip(1).cloned().collect();
    let log = up.logs().join("order-restarted.log");
    let _order = spawn_logged(Path::new(&order.app.args[0]), &args, &log);
    eventually(
        Duration::from_secs(30),
        "every unfinished saga to finish",
        || async { (in_flight(&shop) == 0).then_some(()) },
    )
    .await;
    let resumed = stats(order_addr)["resumed"].as_u64().unwrap_or(0);
    eprintln!("{left} sagas left unfinished by SIGKILL; {resumed} resumed after the restart");
    assert!(resumed >= left as u64, "resumed {resumed} of {left}");

    // Every other service restarted on its database keeps what it had: a user and their
    // session, the stock, the orders and the charges.
    let user = instances
        .iter()
        .find(|i| i.service == "user")
        .unwrap_or_else(|| panic!("no user instance"));
    let user_addr = user.app.addr("--listen");
    let creds = r#"{"username":"restart-proof","password":"s3cret"}"#;
    let (status, _) = curl(user_addr, "POST", "/register", Some(creds));
    assert_eq!(status, 201);
    let (_, session) = curl(user_addr, "POST", "/login", Some(creds));
    let token = session["token"].as_str().unwrap_or_default().to_string();
    let inventory = instances
        .iter()
        .find(|i| i.service == "inventory")
        .unwrap_or_else(|| panic!("no inventory instance"));
    let inv_addr = inventory.app.addr("--listen");
    let total_stock = |addr| -> u64 {
        (1..=10)
            .map(|n| {
                curl(addr, "GET", &format!("/stock/p{n}"), None).1["available"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .sum()
    };
    let stock_before = total_stock(inv_addr);
    assert!(
        stock_before < 10 * 1_000_000,
        "no order took stock: {stock_before}"
    );
    let orders_before = stats(order_addr)["orders"].as_u64();
    let mut restarted = Vec::new();
    for i in [user, inventory] {
        kill(i.app.pid, "KILL");
        eventually(Duration::from_secs(10), "the app to die", || async {
            (!running(i.app.pid)).then_some(())
        })
        .await;
        let args: Vec<String> = i.app.args.iter().skip(1).cloned().collect();
        let log = up.logs().join(format!("{}-restarted.log", i.service));
        restarted.push(spawn_logged(Path::new(&i.app.args[0]), &args, &log));
    }
    eventually(Duration::from_secs(20), "the user service back", || async {
        (curl(user_addr, "POST", "/login", Some(creds)).0 == 200).then_some(())
    })
    .await;
    let (status, profile) = curl_bearer(user_addr, "/profile", &token);
    assert_eq!(
        status, 200,
        "the session from before the restart: {profile}"
    );
    assert_eq!(profile["username"], "restart-proof");
    eventually(
        Duration::from_secs(20),
        "the inventory service back",
        || async { (curl(inv_addr, "GET", "/stock/p1", None).0 == 200).then_some(()) },
    )
    .await;
    let stock_after = total_stock(inv_addr);
    assert!(
        stock_after <= stock_before,
        "the stock came back larger after a restart: {stock_before} -> {stock_after}"
    );
    assert!(stats(order_addr)["orders"].as_u64() >= orders_before);
    eprintln!("stock {stock_before} before the restarts, {stock_after} after");
    up.stop(Duration::from_secs(60)).await;
    charged_once(&shop);
}

/// (status, JSON body) of a call straight to a shop app.
fn curl(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut c = std::process::Command::new("curl");
    c.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method]);
    if let Some(b) = body {
        c.args(["-H", "content-type: application/json", "-d", b]);
    }
    answer(c.arg(format!("http://{addr}{path}")))
}

fn curl_bearer(addr: std::net::SocketAddr, path: &str, token: &str) -> (u16, serde_json::Value) {
    let mut c = std::process::Command::new("curl");
    c.args(["-s", "-o", "-", "-w", "\n%{http_code}"])
        .args(["-H", &format!("authorization: Bearer {token}")]);
    answer(c.arg(format!("http://{addr}{path}")))
}

fn answer(c: &mut std::process::Command) -> (u16, serde_json::Value) {
    let out = c.output().unwrap_or_else(|e| panic!("curl: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or_default(),
    )
}

/// Issue 13 point 3: a second `up` on the same `--workdir` starts from the first's data, and
/// the summary counts from the shop's databases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_up_on_the_same_workdir_starts_from_the_first_ones_data() {
    let keep = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let workdir = keep.path().join("shop-run");
    let mut first = Up::start_on(&workdir, &[]).await;
    let (instances, _) = shop_of(&first);
    let order = instances
        .iter()
        .find(|i| i.service == "order")
        .unwrap_or_else(|| panic!("no order instance"))
        .app
        .addr("--listen");
    let placed = eventually(
        Duration::from_secs(30),
        "orders in the first run",
        || async { stats(order)["orders"].as_u64().filter(|n| *n >= 5) },
    )
    .await;
    first.stop(Duration::from_secs(60)).await;
    let after_first = stats_in(&workdir);
    assert!(after_first >= placed, "{after_first} < {placed}");

    let summary = keep.path().join("summary.json");
    let summary_arg = summary.display().to_string();
    let mut second = Up::start_on(&workdir, &["--summary-json", &summary_arg]).await;
    let (instances, _) = shop_of(&second);
    let order = instances
        .iter()
        .find(|i| i.service == "order")
        .unwrap_or_else(|| panic!("no order instance"))
        .app
        .addr("--listen");
    let at_start = stats(order)["orders"].as_u64().unwrap_or(0);
    assert!(
        at_start >= after_first,
        "the second run starts with {at_start} orders, the first left {after_first}"
    );
    second.stop(Duration::from_secs(60)).await;
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&summary).unwrap_or_else(|e| panic!("{}: {e}", summary.display())),
    )
    .unwrap_or_default();
    let stored = json["shop"]["orders_stored"].as_u64().unwrap_or(0);
    assert!(stored >= after_first, "the summary's orders: {json}");
    assert!(
        json["shop"]["charges_attempted"].as_u64().unwrap_or(0) >= 1,
        "{json}"
    );
    eprintln!("first run left {after_first} orders; the second began with {at_start} and ended with {stored}");
}

/// Orders stored in a work directory's order database.
fn stats_in(workdir: &Path) -> u64 {
    let c = rusqlite::Connection::open_with_flags(
        workdir.join("data").join("shop").join("order.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap_or_else(|e| panic!("order.db: {e}"));
    let n: i64 = c
        .query_row("SELECT count(*) FROM orders", [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{e}"));
    n.max(0) as u64
}
