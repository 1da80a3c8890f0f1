//! A TCP relay between Warren and the real broker that a test can cut and
//! restore: the broker "goes away" for one Warren only, while the shared
//! broker (and every other test) runs on undisturbed.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A relay to `127.0.0.1:5672` (or the test broker's port).
pub struct Proxy {
    pub addr: SocketAddr,
    /// `true` while connections are relayed; set `false` to cut every one.
    up: Arc<watch::Sender<bool>>,
}

impl Proxy {
    /// Starts relaying to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let (up, _) = watch::channel(true);
        let up = Arc::new(up);
        let relay = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let mut state = relay.subscribe();
                if !*state.borrow() {
                    drop(client); // refused while cut
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut server) => {}
                        _ = state.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { addr, up }
    }

    /// A relay to the test broker.
    pub async fn to_broker() -> Self {
        let url = super::amqp_url();
        let port = url
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split('/').next())
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or(5672);
        Self::start(SocketAddr::from(([127, 0, 0, 1], port))).await
    }

    /// The AMQP URI that goes through the relay.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// Cuts every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Relays again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}
