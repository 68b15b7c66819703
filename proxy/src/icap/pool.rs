//! Connections to one ICAP service: at most `max_connections` at once, idle ones kept for the
//! next transaction (ICAP/1.0 connections are persistent unless either side says otherwise).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::path::PathBuf;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsConnector;

use super::IcapError;

/// The read half of a connection (TCP or TLS), buffered.
pub(crate) type Reader = BufReader<Box<dyn AsyncRead + Send + Unpin>>;
/// The write half of a connection.
pub(crate) type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Idle connections older than this are closed rather than reused: c-icap's default keep-alive
/// timeout is 600 s, other services' may be shorter, and a reused connection the service has
/// just closed costs a retry.
const IDLE_MAX: Duration = Duration::from_secs(30);

/// One connection, split so that a body can be written while the answer is read.
pub(crate) struct IcapConn {
    pub(crate) reader: Reader,
    pub(crate) writer: Writer,
    /// Came from the idle list: a failure before any answer may be the service having closed
    /// it meanwhile, and is worth one retry on a new connection.
    pub(crate) reused: bool,
}

pub(crate) struct Pool {
    host: String,
    port: u16,
    connect_timeout: Duration,
    /// How long a transaction waits for a free connection when `max_connections` are busy.
    wait: Duration,
    /// `icaps://`: the trust for the service's certificate (`ca_file`, else the system store),
    /// built at the first connection.
    tls: Option<TlsTrust>,
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

/// Where an `icaps://` service's trust comes from, and the client config once built.
pub(crate) struct TlsTrust {
    ca_file: Option<PathBuf>,
    config: tokio::sync::OnceCell<Arc<ClientConfig>>,
}

impl TlsTrust {
    pub(crate) fn new(ca_file: Option<PathBuf>) -> TlsTrust {
        TlsTrust {
            ca_file,
            config: tokio::sync::OnceCell::new(),
        }
    }

    async fn config(&self) -> Result<Arc<ClientConfig>, IcapError> {
        self.config
            .get_or_try_init(|| async { self.build() })
            .await
            .cloned()
    }

    fn build(&self) -> Result<Arc<ClientConfig>, IcapError> {
        let tls = |reason: String| IcapError::Tls(reason);
        let roots = match &self.ca_file {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                let pem = std::fs::read(path)
                    .map_err(|e| tls(format!("cannot read {}: {e}", path.display())))?;
                for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
                    let cert: CertificateDer<'static> =
                        cert.map_err(|e| tls(format!("{}: {e}", path.display())))?;
                    roots
                        .add(cert)
                        .map_err(|e| tls(format!("{}: {e}", path.display())))?;
                }
                if roots.is_empty() {
                    return Err(tls(format!("no certificates in {}", path.display())));
                }
                roots
            }
            None => crate::intercept::upstream_tls::system_roots(),
        };
        let config = ClientConfig::builder_with_provider(portcullis_certs::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

impl Pool {
    pub(crate) fn new(
        host: String,
        port: u16,
        connect_timeout: Duration,
        wait: Duration,
        max: usize,
        tls: Option<TlsTrust>,
    ) -> Pool {
        Pool {
            host,
            port,
            connect_timeout,
            wait,
            tls,
            permits: Arc::new(Semaphore::new(max)),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle connection, or a new one once a slot is free.
    pub(crate) async fn get(&self) -> Result<Lease, IcapError> {
        let permit = tokio::time::timeout(self.wait, Arc::clone(&self.permits).acquire_owned())
            .await
            .map_err(|_| IcapError::Busy(self.wait))?
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
        match tokio::time::timeout(self.connect_timeout, self.dial()).await {
            Ok(result) => result,
            Err(_) => Err(IcapError::ConnectTimeout(self.connect_timeout)),
        }
    }

    /// TCP, and the TLS handshake for `icaps://`, within `connect_timeout`.
    async fn dial(&self) -> Result<IcapConn, IcapError> {
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(IcapError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (read, writer): (Box<dyn AsyncRead + Send + Unpin>, Writer) = match &self.tls {
            None => {
                let (read, write) = stream.into_split();
                (Box::new(read), Box::new(write))
            }
            Some(trust) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| IcapError::Tls(format!("{}: {e}", self.host)))?;
                let tls = TlsConnector::from(trust.config().await?)
                    .connect(name, stream)
                    .await
                    .map_err(|e| IcapError::Tls(e.to_string()))?;
                let (read, write) = tokio::io::split(tls);
                (Box::new(read), Box::new(write))
            }
        };
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
