//! A TCP proxy between a connector and its server, for one fault no server setting can
//! make: a network cut. [`Proxy::cut`] severs every open connection and refuses new ones
//! for a while, as a broken link or a restarted load balancer would; the server itself
//! notices nothing but closed sockets.
//!
//! ```text
//!   connector ──► 127.0.0.1:<proxy port> ──► 127.0.0.1:<server port>
//!                       │ cut(d): shutdown every pair, drop new ones until now + d
//! ```

use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::servers::{HarnessError, Result};

#[derive(Debug, Default)]
struct Shared {
    down_until: Mutex<Option<Instant>>,
    pairs: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    next: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn down(&self) -> bool {
        self.down_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| Instant::now() < t)
    }

    fn sever(&self) {
        let mut pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        for (a, b) in pairs.values() {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
        pairs.clear();
    }
}

/// A running proxy; dropping it stops accepting (open connections run to their end).
#[derive(Debug)]
pub struct Proxy {
    /// The loopback port to connect to instead of the server's.
    pub port: u16,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Forwards a new loopback port to `upstream_port` on 127.0.0.1.
    pub fn start(upstream_port: u16) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| HarnessError(format!("proxy: cannot listen: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| HarnessError(format!("proxy: {e}")))?
            .port();
        let upstream = SocketAddr::from(([127, 0, 0, 1], upstream_port));
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if s.down() {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(2))
                else {
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let id = s.next.fetch_add(1, Ordering::SeqCst);
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                s.pairs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id, (c2, s2));
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    let s = Arc::clone(&s);
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        // One side ended: end the other, as a closed link would.
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                        s.pairs
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&id);
                    });
                }
            }
        });
        Ok(Self { port, shared })
    }

    /// Severs every open connection and drops new ones for `outage`.
    pub fn cut(&self, outage: Duration) {
        *self
            .shared
            .down_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + outage);
        self.shared.sever();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
