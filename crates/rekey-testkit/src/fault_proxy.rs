//! A loopback TCP proxy in front of PostgreSQL that a test can make fail
//! the ways a production network does: pass bytes through, cut every
//! connection (a failover, a restarted server: established connections end
//! and new ones are closed at once), or go silent (a frozen VM, a
//! black-holing firewall: connections stay open and nothing comes back).
//! It runs on its own thread and runtime, so a test may block on the
//! binary it spawned while the proxy keeps working.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with connections, from the moment it is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Bytes flow both ways.
    Pass,
    /// Bytes flow until a client sends a message containing this text (a
    /// statement naming a column, say); from then on that connection is
    /// silent, and the others pass.
    SilentOn(&'static str),
    /// Every connection is closed, and new ones are closed on accept.
    Cut,
    /// Nothing is forwarded either way; connections stay open.
    Silent,
}

/// A running proxy; dropping it stops it and closes every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// A proxy to `upstream` (host:port), starting as `fault`.
    pub fn start(upstream: SocketAddr, fault: Fault) -> FaultProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let (tx, rx) = watch::channel(fault);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("proxy address");
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("tokio listener");
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream, rx.clone()));
            }
        });
        FaultProxy {
            addr,
            fault: tx,
            runtime: Some(runtime),
        }
    }

    /// A proxy in front of the PostgreSQL that `database_url` names, and
    /// the same URL pointed at the proxy, without TLS (so that the proxy
    /// can see which statement a client sends).
    pub fn in_front_of(database_url: &str, fault: Fault) -> (FaultProxy, String) {
        let mut url = url::Url::parse(database_url).expect("database URL");
        let host = url.host_str().expect("database host").to_string();
        let port = url.port().unwrap_or(5432);
        let upstream = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
            .expect("resolve database host")
            .next()
            .expect("an address for the database host");
        let proxy = FaultProxy::start(upstream, fault);
        url.set_host(Some("127.0.0.1")).expect("host");
        url.set_port(Some(proxy.addr.port())).expect("port");
        url.query_pairs_mut().append_pair("sslmode", "disable");
        (proxy, url.to_string())
    }

    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// One client's connection, for as long as the fault allows. The server
/// is connected to only once bytes may pass: a silent server accepted the
/// connection but never answers its startup.
async fn relay(mut client: TcpStream, upstream: SocketAddr, mut fault: watch::Receiver<Fault>) {
    let mut server: Option<TcpStream> = None;
    let (mut to_client, mut to_server) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        let now = *fault.borrow_and_update();
        match now {
            Fault::Cut => return,
            Fault::Silent => {
                if fault.changed().await.is_err() {
                    return;
                }
            }
            Fault::Pass | Fault::SilentOn(_) => {
                if server.is_none() {
                    let Ok(connected) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    server = Some(connected);
                }
                let Some(server) = server.as_mut() else {
                    return;
                };
                tokio::select! {
                    read = client.read(&mut to_server) => match read {
                        Ok(n) if n > 0 => {
                            if let Fault::SilentOn(needle) = now {
                                if contains(&to_server[..n], needle.as_bytes()) {
                                    // Hold the connection open, forever mute.
                                    std::future::pending::<()>().await;
                                }
                            }
                            if server.write_all(&to_server[..n]).await.is_err() {
                                return;
                            }
                        }
                        _ => return,
                    },
                    read = server.read(&mut to_client) => match read {
                        Ok(n) if n > 0 => {
                            if client.write_all(&to_client[..n]).await.is_err() {
                                return;
                            }
                        }
                        _ => return,
                    },
                    changed = fault.changed() => if changed.is_err() {
                        return;
                    },
                }
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
