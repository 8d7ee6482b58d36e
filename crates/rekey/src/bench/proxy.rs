//! A delaying TCP proxy on 127.0.0.1 for `fleet-bench --db-rtt-ms`: every
//! chunk read from one side is forwarded to the other half a round trip
//! later, in order, in both directions, with no bandwidth limit. It puts a
//! network between the engine and a local server without `tc netem` (which
//! needs root) and without touching the server.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A running proxy; dropping it stops accepting (connections in flight end
/// with their pool).
pub struct DelayProxy {
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl DelayProxy {
    /// Listens on an ephemeral loopback port and forwards every connection
    /// to `upstream` with `rtt / 2` added each way.
    pub async fn start(upstream: String, rtt: Duration) -> std::io::Result<DelayProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let one_way = rtt / 2;
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    // A server that refuses shows up on the client's side as
                    // a closed connection, which sqlx reports.
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        relay(client, server, one_way);
                    }
                });
            }
        });
        Ok(DelayProxy { addr, accept })
    }

    /// Where to connect instead of the server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Two delayed pipes, one per direction.
fn relay(client: TcpStream, server: TcpStream, one_way: Duration) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    pipe(client_read, server_write, one_way);
    pipe(server_read, client_write, one_way);
}

/// One direction: a reader task stamps each chunk with the instant it is
/// due, a writer task sends it then. The channel keeps the order, and it is
/// unbounded so the delay never becomes a bandwidth limit.
fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    });
}
