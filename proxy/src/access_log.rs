//! The access log: Squid's native `access.log` format (so existing log tools keep working) or
//! JSON lines, written by one background task so the request path never waits on disk.

use std::io::{self, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::{mpsc, Notify};

use crate::config::{AccessLogConfig, AccessLogFormat};
use crate::metrics::Metrics;
use crate::record::Record;

impl Record {
    /// Squid's default `logformat squid`:
    /// `%ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm %ru %[un %Sh/%<a %mt`, plus one trailing field
    /// `action/rule` (`tunnel/outlook:m365-hosts`) when the policy decided; log analysers that read
    /// Squid's ten fields ignore it.
    #[cfg(test)]
    pub(crate) fn squid_line(&self) -> String {
        let mut line = String::with_capacity(160);
        self.write_squid(&mut line);
        line
    }

    /// Appends [`Record::squid_line`] to `out`, without the `format!` machinery: this runs once
    /// per request.
    fn write_squid(&self, out: &mut String) {
        let since = self
            .time
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let mut num = itoa::Buffer::new();
        out.push_str(num.format(since.as_secs()));
        out.push('.');
        push_padded(out, num.format(since.subsec_millis()), 3, '0');
        out.push(' ');
        push_padded(out, num.format(self.elapsed_ms), 6, ' ');
        out.push(' ');
        push_ip(out, self.client);
        out.push(' ');
        out.push_str(self.result.as_str());
        out.push('/');
        push_padded(out, num.format(self.status), 3, '0');
        out.push(' ');
        out.push_str(num.format(self.bytes));
        out.push(' ');
        push_sanitised(out, &self.method);
        out.push(' ');
        push_sanitised(out, &self.url);
        out.push(' ');
        push_sanitised(
            out,
            self.user
                .as_deref()
                .filter(|u| !u.is_empty())
                .unwrap_or("-"),
        );
        out.push(' ');
        out.push_str(self.hierarchy.as_str());
        out.push('/');
        match self.peer {
            Some(peer) => push_ip(out, peer),
            None => out.push('-'),
        }
        out.push(' ');
        push_sanitised(
            out,
            self.content_type
                .as_deref()
                .filter(|t| !t.is_empty())
                .unwrap_or("-"),
        );
        if let Some(policy) = &self.policy {
            out.push(' ');
            out.push_str(policy.action);
            out.push('/');
            push_sanitised(out, &policy.rule);
        }
    }

    pub(crate) fn json_line(&self) -> String {
        #[derive(Serialize)]
        struct Json<'a> {
            time: f64,
            #[serde(flatten)]
            record: &'a Record,
        }
        let time = self
            .time
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs_f64();
        serde_json::to_string(&Json { time, record: self })
            .unwrap_or_else(|e| format!("{{\"error\":\"cannot encode record: {e}\"}}"))
    }
}

/// Keeps one log line one line and one field one field: spaces and control bytes from the
/// network (URLs, user names) are percent-encoded.
fn push_sanitised(out: &mut String, field: &str) {
    if field.bytes().all(|b| b.is_ascii_graphic()) {
        out.push_str(field);
        return;
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for c in field.chars() {
        if c.is_ascii_graphic() {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
    }
}

/// `digits` right-aligned in `width`, as `{:>6}` / `{:03}` would.
fn push_padded(out: &mut String, digits: &str, width: usize, pad: char) {
    for _ in digits.len()..width {
        out.push(pad);
    }
    out.push_str(digits);
}

fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut num = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(num.format(octet));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Handle used on the request path; cheap to clone.
///
/// Every finished transaction passes through [`AccessLog::log`], which makes it the one place
/// where request metrics are counted too: the request path needs no metric calls of its own.
#[derive(Clone)]
pub(crate) struct AccessLog {
    inner: Option<Arc<Inner>>,
    metrics: Option<Arc<Metrics>>,
}

struct Inner {
    tx: mpsc::Sender<Record>,
    reopen: Arc<Notify>,
    dropped: AtomicU64,
}

/// Lines queued before the writer catches up; beyond this, lines are counted and dropped rather
/// than letting a slow disk hold up requests or grow memory without bound.
const QUEUE: usize = 16 * 1024;

impl AccessLog {
    pub(crate) fn disabled() -> AccessLog {
        AccessLog {
            inner: None,
            metrics: None,
        }
    }

    /// Counts every logged record in `metrics`, whether or not lines are written.
    pub(crate) fn with_metrics(mut self, metrics: Arc<Metrics>) -> AccessLog {
        self.metrics = Some(metrics);
        self
    }

    /// Opens the destination and starts the writer task. Returns the handle and the writer's
    /// join handle, which finishes after every handle is dropped and the queue is flushed.
    pub(crate) fn start(
        config: &AccessLogConfig,
    ) -> io::Result<(AccessLog, tokio::task::JoinHandle<()>)> {
        if !config.enabled {
            return Ok((AccessLog::disabled(), tokio::spawn(async {})));
        }
        let dest = Destination::from_path(&config.path);
        let mut sink = dest.open()?;
        let (tx, mut rx) = mpsc::channel::<Record>(QUEUE);
        let reopen = Arc::new(Notify::new());
        let reopen_rx = Arc::clone(&reopen);
        let format = config.format;
        let writer = tokio::task::spawn(async move {
            let mut line = String::with_capacity(512);
            loop {
                tokio::select! {
                    record = rx.recv() => {
                        let Some(record) = record else { break };
                        write_record(&mut sink, &mut line, format, &record);
                        // Let the batch gather, then write it: under load the writer wakes and
                        // calls write(2) once per FLUSH_EVERY instead of once per request. A
                        // line reaches the file at most FLUSH_EVERY after it was logged.
                        tokio::time::sleep(FLUSH_EVERY).await;
                        let mut closed = false;
                        loop {
                            match rx.try_recv() {
                                Ok(record) => write_record(&mut sink, &mut line, format, &record),
                                Err(mpsc::error::TryRecvError::Empty) => break,
                                Err(mpsc::error::TryRecvError::Disconnected) => {
                                    closed = true;
                                    break;
                                }
                            }
                        }
                        if let Err(e) = sink.flush() {
                            tracing::warn!(error = %e, "access log flush failed");
                        }
                        if closed {
                            break;
                        }
                    }
                    () = reopen_rx.notified() => {
                        let _ = sink.flush();
                        match dest.open() {
                            Ok(new_sink) => {
                                sink = new_sink;
                                tracing::info!(path = %config_path_label(&dest), "access log reopened");
                            }
                            Err(e) => tracing::error!(error = %e, "cannot reopen access log; keeping the old file"),
                        }
                    }
                }
            }
            let _ = sink.flush();
        });
        Ok((
            AccessLog {
                inner: Some(Arc::new(Inner {
                    tx,
                    reopen,
                    dropped: AtomicU64::new(0),
                })),
                metrics: None,
            },
            writer,
        ))
    }

    /// Counts `record` in the metrics and queues it for the writer, which formats it: the
    /// request path does no formatting and never waits on the disk.
    pub(crate) fn log(&self, record: Record) {
        if let Some(metrics) = &self.metrics {
            metrics.observe(&record);
        }
        let Some(inner) = &self.inner else { return };
        if inner.tx.try_send(record).is_err() {
            let dropped = inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, "access log queue full; lines dropped");
            }
        }
    }

    /// Reopens the log file (after logrotate moved it away).
    pub(crate) fn reopen(&self) {
        if let Some(inner) = &self.inner {
            inner.reopen.notify_one();
        }
    }
}

enum Destination {
    Stdout,
    File(PathBuf),
}

fn config_path_label(dest: &Destination) -> String {
    match dest {
        Destination::Stdout => "-".into(),
        Destination::File(p) => p.display().to_string(),
    }
}

impl Destination {
    fn from_path(path: &std::path::Path) -> Destination {
        if path.as_os_str() == "-" {
            Destination::Stdout
        } else {
            Destination::File(path.to_path_buf())
        }
    }

    fn open(&self) -> io::Result<Box<dyn Write + Send>> {
        Ok(match self {
            Destination::Stdout => Box::new(io::BufWriter::new(io::stdout())),
            Destination::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        io::Error::new(e.kind(), format!("access log {}: {e}", path.display()))
                    })?;
                Box::new(io::BufWriter::with_capacity(64 * 1024, file))
            }
        })
    }
}

/// How long a logged line may wait in the writer's buffer before it is written out.
const FLUSH_EVERY: Duration = Duration::from_millis(50);

fn write_record(
    sink: &mut Box<dyn Write + Send>,
    line: &mut String,
    format: AccessLogFormat,
    record: &Record,
) {
    line.clear();
    match format {
        AccessLogFormat::Squid => record.write_squid(line),
        AccessLogFormat::Json => line.push_str(&record.json_line()),
    }
    line.push('\n');
    if let Err(e) = sink.write_all(line.as_bytes()) {
        tracing::warn!(error = %e, "access log write failed");
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn record() -> Record {
        Record {
            time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            elapsed_ms: 45,
            client: "127.0.0.1".parse().unwrap(),
            result: crate::record::ResultCode::TcpMiss,
            status: 200,
            bytes: 1234,
            bytes_in: 0,
            method: "GET".into(),
            url: "http://example.test/a b".into(),
            user: None,
            groups: None,
            hierarchy: crate::record::Hierarchy::Direct,
            peer: Some("10.0.0.1".parse().unwrap()),
            content_type: Some("text/html".into()),
            error: None,
            channel: crate::record::Channel::Plain,
            policy: None,
            transparent: None,
            icap: Vec::new(),
        }
    }

    #[test]
    fn squid_format() {
        assert_eq!(
            record().squid_line(),
            "1700000000.123     45 127.0.0.1 TCP_MISS/200 1234 GET http://example.test/a%20b - HIER_DIRECT/10.0.0.1 text/html"
        );
    }

    #[test]
    fn squid_format_edges() {
        let mut r = record();
        r.time = UNIX_EPOCH + Duration::from_millis(1_700_000_000_007);
        r.elapsed_ms = 12_345_678;
        r.client = "2001:db8::1".parse().unwrap();
        r.status = 0;
        r.user = Some("dom\\alice smith".into());
        r.peer = None;
        r.content_type = Some(String::new());
        assert_eq!(
            r.squid_line(),
            "1700000000.007 12345678 2001:db8::1 TCP_MISS/000 1234 GET http://example.test/a%20b dom\\alice%20smith HIER_DIRECT/- -"
        );
    }

    #[test]
    fn json_format() {
        let v: serde_json::Value = serde_json::from_str(&record().json_line()).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["url"], "http://example.test/a b");
        assert_eq!(v["time"], 1_700_000_000.123);
    }
}
