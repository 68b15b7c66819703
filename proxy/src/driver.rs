//! Driving a served client connection — plain, or decrypted inside an intercepted tunnel —
//! under the client deadlines: the request head must complete within `client_header` of its
//! first byte, and a connection with nothing in flight closes after its idle time; on
//! shutdown the request in flight finishes, then the connection closes.

use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use tokio_util::sync::CancellationToken;

use crate::activity::{now_ms, Activity, Verdict};
use crate::config::ServerConfig;

/// hyper's HTTP/1 server settings for a client connection, plain or decrypted.
pub(crate) fn http1_builder(server: &ServerConfig) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .max_header_size(server.max_header_bytes)
        // The read buffer must hold a maximal head; beyond it hyper answers 431 as well.
        .max_buf_size(server.max_header_bytes + 1024)
        .max_headers(server.max_headers)
        .preserve_header_case(true);
    builder
}

/// The span every diagnostic line of one request carries (inside its connection's span).
pub(crate) fn request_span<B>(req: &hyper::Request<B>) -> tracing::Span {
    let uri = req.uri();
    let authority = uri.authority().map_or("", http::uri::Authority::as_str);
    tracing::debug_span!("request", method = %req.method(), %authority)
}

/// How a served connection ended other than normally.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Closed {
    #[error("request head not received within the header timeout")]
    HeaderTimeout,
    #[error("idle")]
    Idle,
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
}

/// A hyper server connection that can be asked to finish its in-flight work and close.
pub(crate) trait GracefulConnection:
    std::future::Future<Output = Result<(), hyper::Error>>
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>);
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<I, B, S> GracefulConnection for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
    Self: std::future::Future<Output = Result<(), hyper::Error>>,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I, B, S, E> GracefulConnection for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
    Self: std::future::Future<Output = Result<(), hyper::Error>>,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        hyper::server::conn::http2::Connection::graceful_shutdown(self);
    }
}

/// A connection of either HTTP version, chosen at run time (the ALPN of an intercepted
/// tunnel), driven by the one [`drive`] call.
impl<C: GracefulConnection + ?Sized> GracefulConnection for std::pin::Pin<Box<C>> {
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        self.get_mut().as_mut().graceful_shutdown();
    }
}

/// Drives a connection under the client deadlines kept in `activity` (head within `header` of
/// its first byte; closed after `idle` with nothing in flight) and drains it on shutdown.
pub(crate) async fn drive<C: GracefulConnection>(
    conn: C,
    activity: &Activity,
    header: Duration,
    idle: Duration,
    shutdown: &CancellationToken,
) -> Result<(), Closed> {
    tokio::pin!(conn);
    // The watchdog's futures live as long as the connection: this loop turns once per request
    // (a head starting wakes it), and re-creating a timer and two waiter registrations each
    // time showed up in profiles.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let head_started = activity.head_started();
    tokio::pin!(head_started);
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    // When the timer is due, on the `now_ms` clock; 0 = not armed.
    let mut timer_at = 0;
    let mut draining = false;
    loop {
        let now = now_ms();
        let at = match activity.verdict(now, header, idle) {
            Verdict::WaitUntil(at) => at,
            Verdict::HeaderTimeout => return Err(Closed::HeaderTimeout),
            Verdict::Idle => return Err(Closed::Idle),
        };
        // A deadline that moved later needs no new timer: the old one fires early, and the
        // verdict then re-arms it for the later time.
        if timer_at == 0 || at < timer_at {
            timer
                .as_mut()
                .reset(tokio::time::Instant::now() + Duration::from_millis(at - now));
            timer_at = at;
        }
        tokio::select! {
            result = conn.as_mut() => return result.map_err(Closed::Hyper),
            () = cancelled.as_mut(), if !draining => {
                // Finish the request in flight, if any, then close.
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            () = timer.as_mut(), if timer_at != 0 => timer_at = 0,
            () = head_started.as_mut() => head_started.set(activity.head_started()),
        }
    }
}
