//! A TCP relay on a loopback port of its own, forwarding every connection to one target: a
//! network path the test can stall or cut. TLS passes through untouched, so the two ends still
//! verify each other as if connected directly.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the relay does with bytes and connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Forwards both ways.
    Open,
    /// Connections stay open (and new ones are accepted) but no byte crosses: a stalled path.
    /// What was held is forwarded once it opens again, or lost if it is cut.
    Held,
    /// Every connection is closed, and new ones are closed as soon as they are accepted.
    Cut,
}

pub struct Relay {
    pub addr: SocketAddr,
    state: watch::Sender<State>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// The path, and how many times it was cut: a connection ends once a cut came after it was
/// accepted, even if the path opened again before its pumps looked.
#[derive(Debug, Clone, Copy)]
struct State {
    path: Path,
    cuts: u64,
}

impl Relay {
    /// Listens on a fresh loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let (state, rx) = watch::channel(State {
            path: Path::Open,
            cuts: 0,
        });
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let now = *rx.borrow();
                if now.path == Path::Cut {
                    drop(client);
                    continue;
                }
                tokio::spawn(relay(client, target, rx.clone(), now.cuts));
            }
        });
        Self {
            addr,
            state,
            accepted,
            task,
        }
    }

    /// Connections accepted so far (cut ones included).
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn set(&self, path: Path) {
        self.state.send_modify(|s| {
            if path == Path::Cut {
                s.cuts += 1;
            }
            s.path = path;
        });
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The pumps end too, once they see the sender gone.
        self.task.abort();
    }
}

async fn relay(client: TcpStream, target: SocketAddr, rx: watch::Receiver<State>, cuts: u64) {
    let Ok(upstream) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    // Either direction ending ends the connection: both sockets are dropped here.
    tokio::select! {
        _ = pump(cr, uw, rx.clone(), cuts) => {}
        _ = pump(ur, cw, rx, cuts) => {}
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut rx: watch::Receiver<State>,
    cuts: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    // Resolves when a cut came after this connection was accepted, or the relay is gone.
    let cut = |s: &State| s.cuts != cuts;
    loop {
        let n = tokio::select! {
            n = from.read(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = rx.wait_for(cut) => return,
        };
        // Held bytes wait here.
        let open = match rx.wait_for(|s| cut(s) || s.path != Path::Held).await {
            Ok(s) => !cut(&s),
            Err(_) => false,
        };
        if !open {
            return;
        }
        let wrote = tokio::select! {
            r = to.write_all(&buf[..n]) => r.is_ok(),
            _ = rx.wait_for(cut) => false,
        };
        if !wrote {
            return;
        }
    }
}
