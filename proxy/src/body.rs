//! Body types and the body wrapper that closes a transaction when hyper is done with it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body the proxy produces: streamed from an origin or generated locally.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub(crate) fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(crate) fn incoming(body: hyper::body::Incoming) -> ProxyBody {
    body.map_err(BoxError::from).boxed_unsync()
}

/// Called once when a response body is finished or abandoned.
pub(crate) trait OnBodyDone: Send + 'static {
    /// `bytes` is the number of body bytes that went through; `complete` is false when the body
    /// was dropped before its end (client went away) or failed.
    fn done(self: Box<Self>, bytes: u64, complete: bool);
}

pin_project_lite::pin_project! {
    /// Counts the bytes of a streamed body and reports them when hyper drops it — which is when
    /// the response has been written (or abandoned), the moment Squid writes its log line too.
    pub struct CountedBody {
        #[pin]
        inner: ProxyBody,
        bytes: u64,
        complete: bool,
        on_done: Option<Box<dyn OnBodyDone>>,
    }

    impl PinnedDrop for CountedBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(on_done) = this.on_done.take() {
                on_done.done(*this.bytes, *this.complete);
            }
        }
    }
}

impl CountedBody {
    pub(crate) fn new(inner: ProxyBody, on_done: Box<dyn OnBodyDone>) -> Self {
        let complete = inner.is_end_stream();
        CountedBody {
            inner,
            bytes: 0,
            complete,
            on_done: Some(on_done),
        }
    }
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => *this.complete = true,
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
