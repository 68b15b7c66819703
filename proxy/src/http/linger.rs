//! Lingering after an early answer: a `407` or `403` sent before the request body was read.
//!
//! A client uploading a large body (a POST, Outlook's `RPC_IN_DATA` with its 1 GiB
//! `Content-Length`) is still sending when the proxy refuses it. Closing the connection then,
//! with its unread bytes in the socket, makes the kernel answer with a reset: the upload fails
//! mid-way with "connection reset" and, on Windows, the reset also throws away the answer the
//! client had not read yet — the client never learns that it should authenticate. So, like
//! nginx's `lingering_close`, the body is read and discarded after the answer, for a bounded
//! time: the client reads the whole answer and stops on its own, and the connection stays
//! usable if the body ends within the bound.

use std::time::Duration;

use http::header::EXPECT;
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};

use crate::context::{ConnCtx, Proxy};

/// The longest a refused body is read and discarded (nginx `lingering_time`).
pub(super) const LINGER_TOTAL: Duration = Duration::from_secs(30);
/// The longest the client may pause while it is (nginx `lingering_timeout`).
pub(super) const LINGER_IDLE: Duration = Duration::from_secs(5);

/// Reads and discards `body` in the background, within [`LINGER_TOTAL`] and [`LINGER_IDLE`],
/// while the early answer goes out. Nothing to do for a request without a body, or one waiting
/// for `100 Continue` (its client sends nothing until told to, and never is).
pub(super) fn discard_body(proxy: &Proxy, conn: &ConnCtx, headers: &HeaderMap, body: Incoming) {
    if body.is_end_stream() || headers.contains_key(EXPECT) {
        return;
    }
    // The connection is busy with this body until the drain ends: no idle or header deadline
    // starts under it.
    let busy = conn.activity.begin_request();
    let shutdown = proxy.shutdown.clone();
    tokio::spawn(async move {
        let drain = async {
            let mut body = body;
            let mut discarded = 0u64;
            // Until the end, a broken body, or a pause too long.
            while let Ok(Some(Ok(frame))) = tokio::time::timeout(LINGER_IDLE, body.frame()).await {
                discarded += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            discarded
        };
        tokio::select! {
            discarded = tokio::time::timeout(LINGER_TOTAL, drain) => {
                tracing::debug!(bytes = ?discarded.ok(), "discarded the body of a refused request");
            }
            () = shutdown.cancelled() => {}
        }
        drop(busy);
    });
}
