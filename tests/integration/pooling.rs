//! Upstream connections are pooled and kept alive: many requests, few upstream connections,
//! even when every downstream request arrives on a connection of its own.

use outrigger_tests::client::{self, get, raw_exchange};
use outrigger_tests::proxy::ProxyBuilder;
use outrigger_tests::upstream::Upstream;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_sequential_requests_reuse_a_handful_of_connections() {
    let up = Upstream::start("a").await;
    let proxy = ProxyBuilder::quick(up.addr).spawn().ready().await;
    let url = format!("http://{}/", proxy.outbound());
    let c = client::h1();
    for _ in 0..1000 {
        let res = get(&c, &url).await;
        assert_eq!(res.status(), 200);
        assert_eq!(&res.body()[..], b"ok\n");
    }
    assert_eq!(up.requests(), 1000);
    assert!(
        up.connections() <= 5,
        "upstream saw {} connections for 1000 requests",
        up.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_downstream_connection_per_request_still_reuses_upstream_ones() {
    let up = Upstream::start("a").await;
    let proxy = ProxyBuilder::quick(up.addr).spawn().ready().await;
    for _ in 0..200 {
        let raw = raw_exchange(
            proxy.outbound(),
            b"GET / HTTP/1.1\r\nhost: shop\r\nconnection: close\r\n\r\n",
            Duration::from_secs(10),
        )
        .await
        .expect("exchange");
        assert!(
            raw.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&raw)
        );
    }
    assert_eq!(up.requests(), 200);
    assert!(
        up.connections() <= 5,
        "upstream saw {} connections for 200 requests",
        up.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_multiplex_onto_pooled_upstreams() {
    let up = Upstream::start("a").await;
    let proxy = ProxyBuilder::quick(up.addr).spawn().ready().await;
    let url = format!("http://{}/", proxy.outbound());
    let c = client::h2();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (c, url) = (c.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                assert_eq!(get(&c, &url).await.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(up.requests(), 500);
    // Ten concurrent streams may need up to ten HTTP/1.1 upstream connections at once.
    assert!(
        up.connections() <= 10,
        "upstream saw {} connections",
        up.connections()
    );
}
