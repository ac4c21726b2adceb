//! Body adapters: buffering a request body for replay (retries, mirrors), replaying it, and
//! counting the bytes of a body with a hook that runs once when it ends or is dropped.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::{Body, BoxError};

/// A whole request body held in memory, replayable any number of times.
#[derive(Clone, Debug, Default)]
pub struct Buffered {
    data: Vec<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Buffered {
    /// A fresh body replaying the buffered frames.
    pub fn replay(&self) -> Body {
        Replay { data: self.data.iter().cloned().collect(), trailers: self.trailers.clone() }.boxed_unsync()
    }
}

/// Reads `body` until its end or until more than `limit` data bytes: `Ok(buffered)` when
/// it all fit, else `Err(body)` that yields what was read then the rest.
pub async fn buffer(mut body: Body, limit: usize) -> Result<Buffered, Body> {
    let mut b = Buffered::default();
    let mut size = 0usize;
    loop {
        match body.frame().await {
            None => return Ok(b),
            Some(Err(e)) => {
                // Replays the error to whoever reads the body next.
                return Err(
                    Prefixed { head: b.data.into(), rest: Some(Box::pin(ErrBody(Some(e)))), tail: None }.boxed_unsync()
                );
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => {
                    size += d.len();
                    b.data.push(d);
                    if size > limit {
                        return Err(Prefixed { head: b.data.into(), rest: None, tail: Some(body) }.boxed_unsync());
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        b.trailers = Some(t);
                    }
                }
            },
        }
    }
}

struct Replay {
    data: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
}

impl HttpBody for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(d) = this.data.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.trailers.is_none() {
            SizeHint::with_exact(self.data.iter().map(|d| d.len() as u64).sum())
        } else {
            SizeHint::default()
        }
    }
}

struct ErrBody(Option<BoxError>);

impl HttpBody for ErrBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.get_mut().0.take().map(Err))
    }
}

struct Prefixed {
    head: VecDeque<Bytes>,
    rest: Option<Pin<Box<ErrBody>>>,
    tail: Option<Body>,
}

impl HttpBody for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(d) = this.head.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if let Some(r) = &mut this.rest {
            return r.as_mut().poll_frame(cx);
        }
        match &mut this.tail {
            Some(t) => Pin::new(t).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }
}

/// Runs once when a [`Counted`] body ends or is dropped, with the byte count and trailers.
pub trait OnEnd: Send + 'static {
    /// The body is done (fully read, failed, or abandoned).
    fn done(self: Box<Self>, bytes: u64, trailers: Option<&HeaderMap>);
}

/// Counts data bytes (into a shared counter) and calls a hook at the end.
pub struct Counted {
    inner: Body,
    bytes: Arc<AtomicU64>,
    hook: Option<Box<dyn OnEnd>>,
}

impl Counted {
    /// Wraps `inner`.
    pub fn new(inner: Body, bytes: Arc<AtomicU64>, hook: Option<Box<dyn OnEnd>>) -> Self {
        Counted { inner, bytes, hook }
    }

    fn finish(&mut self, trailers: Option<&HeaderMap>) {
        if let Some(h) = self.hook.take() {
            h.done(self.bytes.load(Ordering::Relaxed), trailers);
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.finish(None);
    }
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &r {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    this.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
                } else if let Some(t) = f.trailers_ref() {
                    let t = t.clone();
                    this.finish(Some(&t));
                }
            }
            None => this.finish(None),
            Some(Err(_)) => {}
        }
        Poll::Ready(r)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An incoming body as [`Body`].
pub fn boxed(b: hyper::body::Incoming) -> Body {
    b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()
}

/// A complete body.
pub fn full(b: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(b.into()).map_err(|never| match never {}).boxed_unsync()
}
