//! One REQMOD or RESPMOD exchange (RFC 3507 §4.4–4.6).
//!
//! Phase one, which can still be undone: options, the ICAP head with the encapsulated HTTP
//! head(s) and the preview, the service's answer to the preview. A failure here leaves the
//! original message whole (the preview bytes are put back), so `bypass_on_error` can forward
//! it. Phase two, after `100 Continue` (or at once for a service without preview): one task
//! writes the rest of the body while it reads the answer, whose body it streams to the client.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

use super::body::{prefixed, Received};
use super::options::closes;
use super::pool::{IcapConn, Lease, Reader};
use super::stream::{read_preview, send_body, stream_body};
use super::wire::{self, HttpRequestHead, HttpResponseHead, IcapHead};
use super::{Client, IcapError, Service};
use crate::body::{BoxError, ProxyBody};

/// What the service made of a message.
pub(crate) enum Adapted<T> {
    /// Unmodified (204) or the service's version (200).
    Message(T, super::IcapResult),
    /// REQMOD only: the service answered in the origin's place (a block page).
    Response(http::Response<ProxyBody>),
}

/// A failed exchange, with the original message when it could be kept whole.
pub(crate) struct Failed<T> {
    pub(crate) error: IcapError,
    pub(crate) original: Option<T>,
}

/// The service's 200: its encapsulated head and body.
pub(super) enum Answer {
    /// 204: the message as it was; the body with its preview bytes put back.
    Unmodified(Option<ProxyBody>),
    Request(HttpRequestHead, Option<ProxyBody>),
    Response(HttpResponseHead, Option<ProxyBody>),
}

/// The message being sent: its encapsulated heads and its body.
pub(super) struct Message<'a> {
    pub(super) req_hdr: &'a [u8],
    /// RESPMOD: the response head.
    pub(super) res_hdr: Option<&'a [u8]>,
    /// `None`: no body (`null-body`).
    pub(super) body: Option<ProxyBody>,
}

impl Service {
    /// Sends `msg`; an `Err` carries the original body back when it is still whole.
    pub(super) async fn exchange(
        self: &Arc<Self>,
        client: &Client<'_>,
        msg: Message<'_>,
    ) -> Result<Answer, Failed<Option<ProxyBody>>> {
        let keep = |error, body| Failed {
            error,
            original: Some(body),
        };
        let options = match self.options().await {
            Ok(o) => o,
            Err(e) => return Err(keep(e, msg.body)),
        };
        let preview = msg.body.as_ref().and(self.preview.or(options.preview));
        // The preview: up to `n` bytes; `ended` when the whole body fitted.
        let (prefix, ended, rest) = match (msg.body, preview) {
            (None, _) => (Bytes::new(), true, None),
            (Some(body), Some(n)) => match read_preview(body, n as usize).await {
                Ok(p) => p,
                Err(e) => {
                    return Err(Failed {
                        error: IcapError::Body(e.to_string()),
                        original: None,
                    })
                }
            },
            (Some(body), None) => (Bytes::new(), false, Some(body)),
        };
        let has_body = rest.is_some() || !prefix.is_empty() || preview.is_some();
        // What to hand back on failure: the body as it was.
        let whole = |prefix: Bytes, rest: Option<ProxyBody>| match rest {
            Some(rest) => Some(prefixed(prefix, rest)),
            None if prefix.is_empty() => None,
            None => Some(crate::body::full(prefix)),
        };

        let head = self.icap_head(client, msg.req_hdr, msg.res_hdr, has_body, ended, preview);
        let mut wire = head;
        wire.extend_from_slice(msg.req_hdr);
        if let Some(res) = msg.res_hdr {
            wire.extend_from_slice(res);
        }
        if preview.is_some() {
            if !prefix.is_empty() {
                wire.extend_from_slice(format!("{:x}\r\n", prefix.len()).as_bytes());
                wire.extend_from_slice(&prefix);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(if ended {
                b"0; ieof\r\n\r\n"
            } else {
                b"0\r\n\r\n"
            });
        }

        let mut lease = match self.pool.get().await {
            Ok(l) => l,
            Err(e) => return Err(keep(e, whole(prefix, rest))),
        };
        // Without a preview the body must follow at once: no answer is expected before it.
        if has_body && preview.is_none() {
            if let Err(e) = self.write_head(&mut lease, &wire).await {
                return Err(keep(e, whole(prefix, rest)));
            }
            return self
                .finish(lease, None, rest)
                .await
                .map_err(|error| Failed {
                    error,
                    original: None,
                });
        }
        let head = match self.first_answer(&mut lease, &wire).await {
            Ok(h) => h,
            Err(e) => return Err(keep(e, whole(prefix, rest))),
        };
        self.saw(&head);
        match head.status {
            100 if !ended => self
                .finish(lease, None, rest)
                .await
                .map_err(|error| Failed {
                    error,
                    original: None,
                }),
            204 => {
                if !closes(&head) {
                    self.pool.put(lease);
                }
                Ok(Answer::Unmodified(whole(prefix, rest)))
            }
            // Decided on the preview (or the whole message): the rest is not needed.
            200 => self
                .finish(lease, Some(head), None)
                .await
                .map_err(|error| Failed {
                    error,
                    original: None,
                }),
            status => Err(keep(IcapError::Status(status), whole(prefix, rest))),
        }
    }

    fn icap_head(
        &self,
        client: &Client<'_>,
        req_hdr: &[u8],
        res_hdr: Option<&[u8]>,
        has_body: bool,
        ended: bool,
        preview: Option<u32>,
    ) -> Vec<u8> {
        let mut h = format!(
            "{} {} ICAP/1.0\r\nHost: {}\r\nX-Client-IP: {}\r\n",
            self.method.as_str(),
            self.url.uri,
            self.url.host,
            client.ip
        );
        if let Some(user) = client.user {
            let user = base64::engine::general_purpose::STANDARD.encode(user);
            h.push_str(&format!("X-Authenticated-User: {user}\r\n"));
        }
        // 204 outside a preview only where the proxy still holds the whole message.
        if !has_body || ended {
            h.push_str("Allow: 204\r\n");
        }
        if let Some(n) = preview {
            h.push_str(&format!("Preview: {n}\r\n"));
        }
        let body_kind = match res_hdr {
            Some(_) => "res-body",
            None => "req-body",
        };
        let body = if has_body { body_kind } else { "null-body" };
        match res_hdr {
            Some(res) => h.push_str(&format!(
                "Encapsulated: req-hdr=0, res-hdr={}, {body}={}\r\n\r\n",
                req_hdr.len(),
                req_hdr.len() + res.len()
            )),
            None => h.push_str(&format!(
                "Encapsulated: req-hdr=0, {body}={}\r\n\r\n",
                req_hdr.len()
            )),
        }
        h.into_bytes()
    }

    async fn write_head(&self, lease: &mut Lease, wire: &[u8]) -> Result<(), IcapError> {
        let writer = &mut lease.conn.writer;
        within(self.timeout, async { Ok(writer.write_all(wire).await?) }).await
    }

    /// Writes the head and preview and reads the answer to them; a reused connection that
    /// fails before answering is replaced once (the service may have closed it meanwhile).
    async fn first_answer(&self, lease: &mut Lease, wire: &[u8]) -> Result<IcapHead, IcapError> {
        let mut retried = false;
        loop {
            let attempt = async {
                let writer = &mut lease.conn.writer;
                within(self.timeout, async { Ok(writer.write_all(wire).await?) }).await?;
                within(self.timeout, wire::read_icap_head(&mut lease.conn.reader)).await
            };
            match attempt.await {
                Err(IcapError::Timeout(t)) => return Err(IcapError::Timeout(t)),
                Err(_) if lease.conn.reused && !retried => {
                    retried = true;
                    self.pool.reconnect(lease).await?;
                }
                other => return other,
            }
        }
    }

    /// Phase two: one task writes `rest` (if any) and reads the answer (`head`, if already
    /// read, else the next one), streaming its body; returns once the answer's head is known.
    async fn finish(
        self: &Arc<Self>,
        lease: Lease,
        head: Option<IcapHead>,
        rest: Option<ProxyBody>,
    ) -> Result<Answer, IcapError> {
        let (answer_tx, answer_rx) = oneshot::channel();
        let service = Arc::clone(self);
        tokio::spawn(async move { service.run(lease, head, rest, answer_tx).await });
        answer_rx.await.map_err(|_| IcapError::Closed)?
    }

    async fn run(
        self: Arc<Self>,
        lease: Lease,
        head: Option<IcapHead>,
        rest: Option<ProxyBody>,
        answer_tx: oneshot::Sender<Result<Answer, IcapError>>,
    ) {
        let (conn, permit) = lease.into_parts();
        let IcapConn {
            mut reader,
            mut writer,
            reused,
        } = conn;
        let timeout = self.timeout;
        let (read_result, written) = {
            let write = async {
                let sent = match rest {
                    Some(body) => send_body(&mut writer, body, timeout).await,
                    None => Ok(()),
                };
                if sent.is_err() {
                    // The service learns at once that no more is coming; the reader then fails
                    // fast instead of waiting out the timeout.
                    let _ = writer.shutdown().await;
                }
                sent
            };
            let read = async {
                let mut answer_tx = Some(answer_tx);
                let result = async {
                    let head = match head {
                        Some(h) => h,
                        None => within(timeout, wire::read_icap_head(&mut reader)).await?,
                    };
                    self.saw(&head);
                    if head.status != 200 {
                        return Err(IcapError::Status(head.status));
                    }
                    let close = closes(&head);
                    let (answer, body_tx) =
                        within(timeout, read_answer(&head, &mut reader)).await?;
                    if let Some(tx) = answer_tx.take() {
                        tx.send(Ok(answer)).map_err(|_| IcapError::Closed)?;
                    }
                    if let Some(tx) = body_tx {
                        stream_body(&mut reader, tx, timeout).await?;
                    }
                    Ok(close)
                }
                .await;
                match (result, answer_tx.take()) {
                    (Ok(close), _) => Ok(close),
                    (Err(e), Some(tx)) => {
                        let _ = tx.send(Err(e));
                        Err(())
                    }
                    (Err(e), None) => {
                        tracing::debug!(service = %self.name, error = %e, "ICAP answer body failed");
                        Err(())
                    }
                }
            };
            tokio::pin!(write);
            tokio::pin!(read);
            let mut written = None;
            let read_result = tokio::select! {
                r = &mut read => r,
                w = &mut write => { written = Some(w); (&mut read).await }
            };
            (read_result, written)
        };
        if matches!(read_result, Ok(false)) && matches!(written, Some(Ok(()))) {
            self.pool.put(Lease::from_parts(
                IcapConn {
                    reader,
                    writer,
                    reused,
                },
                permit,
            ));
        }
    }
}

/// The sections of a 200 answer: its encapsulated heads, and a channel for its body if it has
/// one (the sender goes to the reader, the body to the caller).
async fn read_answer(
    head: &IcapHead,
    reader: &mut Reader,
) -> Result<(Answer, Option<mpsc::Sender<Result<Bytes, BoxError>>>), IcapError> {
    let sections = head.encapsulated()?;
    let (mut req, mut res, mut has_body) = (None, None, false);
    for (i, (name, offset)) in sections.iter().enumerate() {
        match name.as_str() {
            "req-hdr" | "res-hdr" => {
                let next = sections
                    .get(i + 1)
                    .map(|s| s.1)
                    .ok_or_else(|| IcapError::protocol("Encapsulated ends with a head"))?;
                let bytes = wire::read_exact_head(reader, next - offset).await?;
                if name == "req-hdr" {
                    req = Some(wire::parse_http_request(&bytes)?);
                } else {
                    res = Some(wire::parse_http_response(&bytes)?);
                }
            }
            "req-body" | "res-body" => {
                has_body = true;
                break;
            }
            "null-body" => break,
            other => {
                return Err(IcapError::protocol(format!(
                    "unexpected Encapsulated section {other:?}"
                )))
            }
        }
    }
    let (tx, body) = if has_body {
        let (tx, body) = Received::channel();
        (Some(tx), Some(body))
    } else {
        (None, None)
    };
    let answer = match (res, req) {
        (Some(res), _) => Answer::Response(res, body),
        (None, Some(req)) => Answer::Request(req, body),
        (None, None) => return Err(IcapError::protocol("200 without an encapsulated head")),
    };
    Ok((answer, tx))
}

/// `f` under the service's deadline.
pub(super) async fn within<T>(
    timeout: Duration,
    f: impl std::future::Future<Output = Result<T, IcapError>>,
) -> Result<T, IcapError> {
    tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| IcapError::Timeout(timeout))?
}
