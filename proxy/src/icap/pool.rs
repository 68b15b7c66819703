//! Connections to one ICAP service: at most `max_connections` at once, idle ones kept for the
//! next transaction (ICAP/1.0 connections are persistent unless either side says otherwise).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::BufReader;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::IcapError;

/// Idle connections older than this are closed rather than reused: c-icap's default keep-alive
/// timeout is 600 s, other services' may be shorter, and a reused connection the service has
/// just closed costs a retry.
const IDLE_MAX: Duration = Duration::from_secs(30);

/// One connection, split so that a body can be written while the answer is read.
pub(crate) struct IcapConn {
    pub(crate) reader: BufReader<OwnedReadHalf>,
    pub(crate) writer: OwnedWriteHalf,
    /// Came from the idle list: a failure before any answer may be the service having closed
    /// it meanwhile, and is worth one retry on a new connection.
    pub(crate) reused: bool,
}

pub(crate) struct Pool {
    host: String,
    port: u16,
    connect_timeout: Duration,
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<(IcapConn, Instant)>>,
}

/// A connection and its slot; the slot is freed when this is dropped, the connection closed
/// unless it was given back with [`Pool::put`].
pub(crate) struct Lease {
    pub(crate) conn: IcapConn,
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    /// The connection and its slot, for a task that splits the connection's halves.
    pub(crate) fn into_parts(self) -> (IcapConn, OwnedSemaphorePermit) {
        (self.conn, self._permit)
    }

    pub(crate) fn from_parts(conn: IcapConn, permit: OwnedSemaphorePermit) -> Lease {
        Lease {
            conn,
            _permit: permit,
        }
    }
}

impl Pool {
    pub(crate) fn new(host: String, port: u16, connect_timeout: Duration, max: usize) -> Pool {
        Pool {
            host,
            port,
            connect_timeout,
            permits: Arc::new(Semaphore::new(max)),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle connection, or a new one once a slot is free.
    pub(crate) async fn get(&self) -> Result<Lease, IcapError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| IcapError::Closed)?;
        if let Some(conn) = self.take_idle() {
            return Ok(Lease {
                conn,
                _permit: permit,
            });
        }
        Ok(Lease {
            conn: self.connect().await?,
            _permit: permit,
        })
    }

    /// A new connection in the same slot, after a reused one failed.
    pub(crate) async fn reconnect(&self, lease: &mut Lease) -> Result<(), IcapError> {
        lease.conn = self.connect().await?;
        Ok(())
    }

    fn take_idle(&self) -> Option<IcapConn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((mut conn, since)) = idle.pop() {
            if since.elapsed() < IDLE_MAX {
                conn.reused = true;
                return Some(conn);
            }
        }
        None
    }

    async fn connect(&self) -> Result<IcapConn, IcapError> {
        let dial = TcpStream::connect((self.host.as_str(), self.port));
        let stream = match tokio::time::timeout(self.connect_timeout, dial).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(IcapError::Connect(e)),
            Err(_) => return Err(IcapError::ConnectTimeout(self.connect_timeout)),
        };
        let _ = stream.set_nodelay(true);
        let (read, writer) = stream.into_split();
        Ok(IcapConn {
            reader: BufReader::with_capacity(64 * 1024, read),
            writer,
            reused: false,
        })
    }

    /// Keeps a connection whose exchange ended cleanly for the next transaction.
    pub(crate) fn put(&self, lease: Lease) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.push((lease.conn, Instant::now()));
    }
}
