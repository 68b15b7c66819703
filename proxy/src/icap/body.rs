//! The two bodies ICAP needs: the original body with the bytes already read for the preview
//! put back in front ([`Prefixed`]), and a service's answer body arriving from the task that
//! reads the ICAP connection ([`Received`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use crate::body::{BoxError, ProxyBody};

pin_project_lite::pin_project! {
    /// `prefix`, then `inner`.
    pub(crate) struct Prefixed {
        prefix: Option<Bytes>,
        #[pin]
        inner: ProxyBody,
    }
}

/// `prefix` (when not empty) followed by `inner`, as one body.
pub(crate) fn prefixed(prefix: Bytes, inner: ProxyBody) -> ProxyBody {
    if prefix.is_empty() {
        return inner;
    }
    Prefixed {
        prefix: Some(prefix),
        inner,
    }
    .boxed_unsync()
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        this.inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let extra = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        // Upper first: SizeHint refuses a lower bound above the upper one at every step.
        let mut hint = SizeHint::new();
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + extra);
        }
        hint.set_lower(inner.lower() + extra);
        hint
    }
}

/// The answer body a reader task decodes from the ICAP connection; a small channel, so the
/// task reads no faster than the client takes the bytes.
pub(crate) struct Received {
    rx: mpsc::Receiver<Result<Bytes, BoxError>>,
}

impl Received {
    pub(crate) fn channel() -> (mpsc::Sender<Result<Bytes, BoxError>>, ProxyBody) {
        let (tx, rx) = mpsc::channel(4);
        (tx, Received { rx }.boxed_unsync())
    }
}

impl Body for Received {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx
            .poll_recv(cx)
            .map(|piece| piece.map(|r| r.map(Frame::data)))
    }
}
