//! Per-connection activity tracking for the client-side deadlines that hyper cannot express:
//! a request head must arrive within `client_header` of its first byte (slowloris), and a
//! keep-alive connection with nothing in flight is closed after `client_idle`. hyper's own
//! header timeout starts as soon as a connection waits for its next request, so it would cut
//! idle keep-alive connections at the header deadline; hence this watchdog.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Milliseconds since the process's clock epoch, never 0 (0 means "not set").
pub(crate) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_millis() as u64 + 1
}

#[derive(Debug)]
pub(crate) struct Activity {
    in_flight: AtomicU64,
    /// When the first byte of a not-yet-complete request head arrived (0 = none pending).
    head_started: AtomicU64,
    /// When the connection last became idle (no request in flight).
    idle_since: AtomicU64,
    /// Wakes the watchdog when a head starts, so it switches to the (shorter) header deadline.
    head_start: Notify,
}

/// What the watchdog should do next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Check again at this time (ms on the [`now_ms`] clock).
    WaitUntil(u64),
    HeaderTimeout,
    Idle,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            idle_since: AtomicU64::new(now_ms()),
            head_start: Notify::new(),
        })
    }

    /// A request head has been parsed; the guard ends the request when dropped.
    pub(crate) fn begin_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Release);
        InFlight(Arc::clone(self))
    }

    fn saw_bytes(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Acquire) == 0
        {
            self.head_started.store(now_ms(), Ordering::Release);
            self.head_start.notify_one();
        }
    }

    /// Resolves when the first byte of a new request head arrives.
    pub(crate) async fn head_started(&self) {
        self.head_start.notified().await;
    }

    pub(crate) fn verdict(&self, now: u64, header: Duration, idle: Duration) -> Verdict {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            // Long requests (uploads, long polls) have their own upstream timeouts.
            return Verdict::WaitUntil(now + idle.as_millis() as u64);
        }
        let started = self.head_started.load(Ordering::Acquire);
        let (since, limit, verdict) = if started != 0 {
            (started, header, Verdict::HeaderTimeout)
        } else {
            (self.idle_since.load(Ordering::Acquire), idle, Verdict::Idle)
        };
        let deadline = since + limit.as_millis() as u64;
        if now >= deadline {
            verdict
        } else {
            Verdict::WaitUntil(deadline)
        }
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.idle_since.store(now_ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// The client socket, noting when bytes of a new request head start to arrive.
    pub struct ActivityIo<T> {
        #[pin]
        inner: T,
        activity: Arc<Activity>,
    }
}

impl<T> ActivityIo<T> {
    pub(crate) fn new(inner: T, activity: Arc<Activity>) -> Self {
        ActivityIo { inner, activity }
    }

    pub(crate) fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: AsyncRead> AsyncRead for ActivityIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.saw_bytes();
        }
        polled
    }
}

impl<T: AsyncWrite> AsyncWrite for ActivityIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let a = Activity::new();
        let header = Duration::from_millis(100);
        let idle = Duration::from_millis(1000);
        let t0 = a.idle_since.load(Ordering::Acquire);
        assert_eq!(
            a.verdict(t0 + 10, header, idle),
            Verdict::WaitUntil(t0 + 1000)
        );
        assert_eq!(a.verdict(t0 + 1000, header, idle), Verdict::Idle);
        a.saw_bytes();
        let h = a.head_started.load(Ordering::Acquire);
        assert_eq!(a.verdict(h + 100, header, idle), Verdict::HeaderTimeout);
        let guard = a.begin_request();
        assert!(matches!(
            a.verdict(h + 5000, header, idle),
            Verdict::WaitUntil(_)
        ));
        a.saw_bytes(); // body bytes while in flight do not start a head deadline
        assert_eq!(a.head_started.load(Ordering::Acquire), 0);
        drop(guard);
        let idle_since = a.idle_since.load(Ordering::Acquire);
        assert_eq!(
            a.verdict(idle_since + 999, header, idle),
            Verdict::WaitUntil(idle_since + 1000)
        );
    }
}
