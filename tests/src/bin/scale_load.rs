//! Load for the scale test and `bench/scale`: an origin that holds connections, a client that
//! opens many idle CONNECT tunnels, and a burst of CONNECTs sent back to back. Each prints one
//! JSON line of figures; tunnels are held until standard input closes.
//!
//! ```text
//! scale_load origin LISTENERS                      # prints {"ports":[..]} then serves
//! scale_load tunnels PROXY TARGETS N PARALLEL SOURCES
//! scale_load burst PROXY TARGET N CLIENTS
//! ```
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
        other => bail!("unknown mode {other:?}: origin, tunnels or burst"),
    }
}

fn list<T: std::str::FromStr>(text: &str) -> Result<Vec<T>>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let items = text
        .split(',')
        .map(|s| s.trim().parse::<T>().with_context(|| format!("bad list item {s:?}")))
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
    let mut reader = BufReader::with_capacity(1, stream);
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
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (source, target) = (sources[i % sources.len()], targets[i % targets.len()]);
        let gate = Arc::clone(&gate);
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            tokio::time::timeout(TIMEOUT, open_tunnel(proxy, source, target)).await?
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
    while let Some(sender) = senders.join_next().await {
        let mut answers = sender?;
        while let Some(joined) = answers.join_next().await {
            match joined? {
                Ok((time, stream)) => {
                    times.push(time.as_secs_f64() * 1000.0);
                    held.push(stream);
                }
                Err(e) => errors.add(&e),
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
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
        })
    );
    drop(held);
    Ok(())
}

type Answer = Result<(Duration, TcpStream)>;

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
            Ok((t0.elapsed(), stream))
        });
    }
    answers
}
