//! Load for the scale test and `bench/scale`: an origin that holds connections, a client that
//! opens many idle CONNECT tunnels, and a burst of CONNECTs sent back to back. Each prints one
//! JSON line of figures; tunnels are held until standard input closes.
//!
//! ```text
//! scale_load origin LISTENERS                      # prints {"ports":[..]} then serves
//! scale_load tunnels PROXY TARGETS N PARALLEL SOURCES
//! scale_load burst PROXY TARGET N CLIENTS
//! scale_load tls-origin LISTENERS CA_FILE          # writes its CA to CA_FILE, prints {"ports":[..]}
//! scale_load intercepted PROXY PORTS N PARALLEL SOURCES PROXY_CA_FILE
//! ```
//! `intercepted` opens `CONNECT localhost:PORT` tunnels the proxy inspects: a TLS handshake with
//! the proxy's minted certificate (trusting PROXY_CA_FILE), one request and its response, then
//! the connection is held idle, as a mail client's keep-alive connection is.
//! TARGETS and SOURCES are comma-separated (`127.0.0.1:4000,127.0.0.1:4001`, `127.0.1.1,…`);
//! tunnels spread over them round-robin, so one run is not bounded by one address's ephemeral
//! ports. A tunnel counts once the origin's byte came back through it (the relay is running).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;

const TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // Thousands of sockets: take the whole hard limit, as the proxy does.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let arg = |i: usize| -> Result<&str> {
        args.get(i)
            .map(String::as_str)
            .with_context(|| format!("missing argument {i}; see the module docs"))
    };
    match arg(0)? {
        "origin" => runtime.block_on(origin(arg(1)?.parse()?)),
        "tunnels" => runtime.block_on(tunnels(
            arg(1)?.parse()?,
            list(arg(2)?)?,
            arg(3)?.parse()?,
            arg(4)?.parse()?,
            list(arg(5)?)?,
        )),
        "burst" => runtime.block_on(burst(
            arg(1)?.parse()?,
            arg(2)?.parse()?,
            arg(3)?.parse()?,
            arg(4)?.parse()?,
        )),
        "tls-origin" => runtime.block_on(tls_origin(arg(1)?.parse()?, arg(2)?)),
        "intercepted" => runtime.block_on(intercepted(
            arg(1)?.parse()?,
            list(arg(2)?)?,
            arg(3)?.parse()?,
            arg(4)?.parse()?,
            list(arg(5)?)?,
            arg(6)?,
        )),
        other => bail!("unknown mode {other:?}: origin, tunnels, burst, tls-origin or intercepted"),
    }
}

fn list<T: std::str::FromStr>(text: &str) -> Result<Vec<T>>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let items = text
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<T>()
                .with_context(|| format!("bad list item {s:?}"))
        })
        .collect::<Result<Vec<T>>>()?;
    if items.is_empty() {
        bail!("empty list");
    }
    Ok(items)
}

/// `listeners` listeners on 127.0.0.1: each connection gets one byte back for the first byte
/// it sends, then is held until the peer closes.
async fn origin(listeners: usize) -> Result<()> {
    let mut ports = Vec::new();
    for _ in 0..listeners {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let listener = socket.listen(4096)?;
        ports.push(listener.local_addr()?.port());
        tokio::spawn(serve_origin(listener));
    }
    println!("{}", serde_json::json!({ "ports": ports }));
    std::future::pending::<()>().await;
    Ok(())
}

async fn serve_origin(listener: TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        tokio::spawn(async move {
            let mut byte = [0u8; 1];
            if stream.read_exact(&mut byte).await.is_ok() && stream.write_all(b"y").await.is_ok() {
                // Hold until the other side closes.
                let mut sink = [0u8; 64];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            }
        });
    }
}

/// Connects from `source` (port chosen by the kernel) to the proxy.
async fn connect_from(source: IpAddr, proxy: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(proxy).await
}

/// Sends a CONNECT and reads the response head; an error unless it is a 200.
async fn connect_through(stream: &mut TcpStream, target: SocketAddr) -> Result<()> {
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    read_head(stream).await
}

/// Reads a response head byte by byte (nothing after it is consumed); an error unless 200.
async fn read_head(stream: &mut TcpStream) -> Result<()> {
    read_head_from(&mut BufReader::with_capacity(1, stream)).await
}

/// Reads a response head from `reader`; an error unless 200.
async fn read_head_from<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> Result<()> {
    let mut status = String::new();
    reader.read_line(&mut status).await?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            bail!("closed in the response head");
        }
        if line == "\r\n" {
            break;
        }
    }
    if !status.starts_with("HTTP/1.1 200") {
        bail!("{}", status.trim());
    }
    Ok(())
}

async fn open_tunnel(proxy: SocketAddr, source: IpAddr, target: SocketAddr) -> Result<TcpStream> {
    let mut stream = connect_from(source, proxy).await?;
    connect_through(&mut stream, target).await?;
    stream.write_all(b"x").await?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await?;
    Ok(stream)
}

/// Error messages and how often each was seen (for the JSON line).
#[derive(Default)]
struct Errors(BTreeMap<String, usize>);

impl Errors {
    fn add(&mut self, e: &anyhow::Error) {
        let key: String = format!("{e:#}").chars().take(100).collect();
        *self.0.entry(key).or_default() += 1;
    }
    fn total(&self) -> usize {
        self.0.values().sum()
    }
}

async fn tunnels(
    proxy: SocketAddr,
    targets: Vec<SocketAddr>,
    n: usize,
    parallel: usize,
    sources: Vec<IpAddr>,
) -> Result<()> {
    hold_many(n, parallel, move |i| {
        let (source, target) = (sources[i % sources.len()], targets[i % targets.len()]);
        open_tunnel(proxy, source, target)
    })
    .await
}

/// Opens `n` connections with `open` (at most `parallel` at a time), prints the JSON line and
/// holds them until standard input closes.
async fn hold_many<T, F, Fut>(n: usize, parallel: usize, open: F) -> Result<()>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let gate = Arc::clone(&gate);
        let opening = open(i);
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            tokio::time::timeout(TIMEOUT, opening).await?
        });
    }
    let (mut open, mut errors) = (Vec::with_capacity(n), Errors::default());
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            Ok(stream) => open.push(stream),
            Err(e) => errors.add(&e),
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "ok": open.len(), "errors": errors.total(), "error_kinds": errors.0,
            "secs": started.elapsed().as_secs_f64(),
        })
    );
    // Held until the caller has measured and closes our standard input.
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    while matches!(stdin.read(&mut sink).await, Ok(n) if n > 0) {}
    drop(open);
    Ok(())
}

/// `n` CONNECTs sent back to back by `clients` clients at once (source addresses 127.0.2.1,
/// …): each client opens a connection, writes its CONNECT and goes on to the next without
/// waiting for the answer, as a reconnect storm does. Reports the time from each connection's
/// start to its 200.
async fn burst(proxy: SocketAddr, target: SocketAddr, n: usize, clients: u8) -> Result<()> {
    let started = Instant::now();
    let clients = usize::from(clients.max(1));
    let mut senders = tokio::task::JoinSet::new();
    for c in 0..clients {
        let source = IpAddr::from([127, 0, 2, 1 + c as u8]);
        let count = n / clients + usize::from(c < n % clients);
        senders.spawn(send_back_to_back(proxy, source, target, count));
    }
    let (mut times, mut held, mut errors) = (Vec::with_capacity(n), Vec::new(), Errors::default());
    // When the slowest answers' connections were started (ms after the burst began): a stall
    // shows as a cluster.
    let mut slow: Vec<(f64, f64)> = Vec::with_capacity(n);
    while let Some(sender) = senders.join_next().await {
        let mut answers = sender?;
        while let Some(joined) = answers.join_next().await {
            match joined? {
                Ok((t0, time, stream)) => {
                    times.push(time.as_secs_f64() * 1000.0);
                    slow.push((
                        time.as_secs_f64() * 1000.0,
                        (t0 - started).as_secs_f64() * 1000.0,
                    ));
                    held.push(stream);
                }
                Err(e) => errors.add(&e),
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    // Per 50 ms window since the burst began: connections sent, and 200s received. A proxy
    // that keeps pace answers in the window it was sent in; a stall shows as a gap.
    let window = |ms: f64| (ms / 50.0) as usize;
    let windows = window(secs * 1000.0) + 1;
    let (mut sent_per, mut answered_per) = (vec![0u32; windows], vec![0u32; windows]);
    for &(time, start) in &slow {
        sent_per[window(start).min(windows - 1)] += 1;
        answered_per[window(start + time).min(windows - 1)] += 1;
    }
    slow.sort_by(|a, b| b.0.total_cmp(&a.0));
    let slowest_started: Vec<u64> = slow.iter().take(10).map(|s| s.1 as u64).collect();
    times.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        let i = ((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1));
        times.get(i).copied()
    };
    println!(
        "{}",
        serde_json::json!({
            "ok": times.len(), "errors": errors.total(), "error_kinds": errors.0, "secs": secs,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": times.last(),
            "slowest_started_ms": slowest_started,
            "sent_per_50ms": sent_per, "answered_per_50ms": answered_per,
        })
    );
    drop(held);
    Ok(())
}

/// When the connection was started, how long until its 200, and the connection.
type Answer = Result<(Instant, Duration, TcpStream)>;

/// One client's connections, opened one after another; each one's answer is awaited by its
/// own task.
async fn send_back_to_back(
    proxy: SocketAddr,
    source: IpAddr,
    target: SocketAddr,
    count: usize,
) -> tokio::task::JoinSet<Answer> {
    let mut answers = tokio::task::JoinSet::new();
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    for _ in 0..count {
        let t0 = Instant::now();
        let sent = async {
            let mut stream = tokio::time::timeout(TIMEOUT, connect_from(source, proxy)).await??;
            stream.write_all(request.as_bytes()).await?;
            Ok::<_, anyhow::Error>(stream)
        }
        .await;
        answers.spawn(async move {
            let mut stream = sent?;
            tokio::time::timeout(TIMEOUT, read_head(&mut stream)).await??;
            Ok((t0, t0.elapsed(), stream))
        });
    }
    answers
}

/// A TLS origin for `localhost` on `listeners` listeners: answers each request with a 1-byte
/// body and keeps the connection open. Its (fresh) CA goes to `ca_file` for the proxy to trust.
async fn tls_origin(listeners: usize, ca_file: &str) -> Result<()> {
    let (ca, chain, key) = portcullis_e2e::tls::origin_certificate(&["localhost"]);
    std::fs::write(ca_file, ca).with_context(|| format!("writing {ca_file}"))?;
    let acceptor = portcullis_e2e::tls::acceptor(chain, key);
    let mut ports = Vec::new();
    for _ in 0..listeners {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let listener = socket.listen(4096)?;
        ports.push(listener.local_addr()?.port());
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        let _ = answer_requests(tls).await;
                    }
                });
            }
        });
    }
    println!("{}", serde_json::json!({ "ports": ports }));
    std::future::pending::<()>().await;
    Ok(())
}

/// Answers every request head on `stream` with `200` and a 1-byte body, until it closes.
async fn answer_requests<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: S,
) -> Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        if line == "\r\n" {
            reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\ny")
                .await?;
        }
    }
}

async fn intercepted(
    proxy: SocketAddr,
    ports: Vec<u16>,
    n: usize,
    parallel: usize,
    sources: Vec<IpAddr>,
    proxy_ca: &str,
) -> Result<()> {
    let pem = std::fs::read(proxy_ca).with_context(|| format!("reading {proxy_ca}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    hold_many(n, parallel, move |i| {
        let (source, port) = (sources[i % sources.len()], ports[i % ports.len()]);
        open_intercepted(proxy, source, port, connector.clone())
    })
    .await
}

/// CONNECT, TLS with the proxy's minted certificate, one request answered: the proxy now holds
/// a decrypted client connection and (pooled) an origin connection.
async fn open_intercepted(
    proxy: SocketAddr,
    source: IpAddr,
    port: u16,
    connector: tokio_rustls::TlsConnector,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut stream = connect_from(source, proxy).await?;
    let authority = format!("localhost:{port}");
    let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    read_head(&mut stream).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut tls = connector.connect(name, stream).await?;
    let request = format!("GET /idle HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    // The head, then the 1-byte body.
    let mut reader = BufReader::new(&mut tls);
    read_head_from(&mut reader).await?;
    let mut body = [0u8; 1];
    reader.read_exact(&mut body).await?;
    Ok(tls)
}
