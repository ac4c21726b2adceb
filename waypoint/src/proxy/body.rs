//! Body adapters: buffering a request body for replay (retries, mirrors), replaying it,
//! copying a body too large to buffer to mirrors as it streams ([`tee`]), and counting the
//! bytes of a body with a hook that runs once when it ends or is dropped.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
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

/// Bytes a mirror may fall behind the request (while it connects, or when it is slower than
/// the backend) before it is cut off; as much as Envoy buffers per request by default.
pub const MIRROR_LAG: usize = 1024 * 1024;

/// Streams `body` on, sending a copy of each frame to each of `mirrors` bodies as it passes.
/// The request never waits for a mirror: one that falls [`MIRROR_LAG`] bytes behind is cut
/// off, and its body fails, as does every mirror's if the request body fails or is dropped
/// before its end. A mirror's body ends cleanly only when it got every frame.
pub fn tee(body: Body, mirrors: usize) -> (Body, Vec<Body>) {
    let mut txs = Vec::with_capacity(mirrors);
    let mut rxs = Vec::with_capacity(mirrors);
    for _ in 0..mirrors {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(Lag::default());
        txs.push(MirrorTx { tx, shared: shared.clone() });
        rxs.push(MirrorBody { rx, shared }.boxed_unsync());
    }
    (Tee { inner: body, mirrors: txs }.boxed_unsync(), rxs)
}

/// What a mirror's two ends share.
#[derive(Default)]
struct Lag {
    /// Data bytes sent and not yet taken by the mirror.
    queued: std::sync::atomic::AtomicUsize,
    /// Set, before the sender is dropped, once every frame was delivered.
    complete: AtomicBool,
}

struct MirrorTx {
    tx: tokio::sync::mpsc::UnboundedSender<Frame<Bytes>>,
    shared: Arc<Lag>,
}

impl MirrorTx {
    /// Queues a copy; `false` when the mirror is gone or too far behind (then it is dropped).
    fn send(&self, frame: Frame<Bytes>) -> bool {
        let len = frame.data_ref().map_or(0, Bytes::len);
        if self.shared.queued.fetch_add(len, Ordering::AcqRel) + len > MIRROR_LAG {
            return false;
        }
        self.tx.send(frame).is_ok()
    }
}

struct Tee {
    inner: Body,
    mirrors: Vec<MirrorTx>,
}

impl HttpBody for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &r {
            Some(Ok(f)) => {
                let copy = || match (f.data_ref(), f.trailers_ref()) {
                    (Some(d), _) => Some(Frame::data(d.clone())),
                    (None, Some(t)) => Some(Frame::trailers(t.clone())),
                    (None, None) => None,
                };
                // A mirror too far behind, or one that gave up, is dropped; its body then fails
                // for want of `complete`.
                this.mirrors.retain(|m| copy().is_none_or(|c| m.send(c)));
            }
            None => {
                for m in this.mirrors.drain(..) {
                    m.shared.complete.store(true, Ordering::Release);
                }
            }
            Some(Err(_)) => this.mirrors.clear(),
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

struct MirrorBody {
    rx: tokio::sync::mpsc::UnboundedReceiver<Frame<Bytes>>,
    shared: Arc<Lag>,
}

impl HttpBody for MirrorBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match ready!(this.rx.poll_recv(cx)) {
            Some(f) => {
                this.shared.queued.fetch_sub(f.data_ref().map_or(0, Bytes::len), Ordering::AcqRel);
                Poll::Ready(Some(Ok(f)))
            }
            None if this.shared.complete.load(Ordering::Acquire) => Poll::Ready(None),
            None => Poll::Ready(Some(Err(
                "the mirror fell behind the request, or the request body did not complete".into()
            ))),
        }
    }
}

/// The error of a body [`until`] cut off at its deadline: [`Counted`] tells its hook, so the
/// request is accounted as timed out (`UT`) rather than by the status its head carried.
#[derive(Debug, thiserror::Error)]
#[error("response timeout: the body did not end before the route's timeout")]
pub struct BodyTimedOut;

/// Passes `body` on until `deadline`; a body not done by then fails with [`BodyTimedOut`] (its
/// reader resets the stream or closes the connection) and is dropped, which lets the upstream
/// go too.
pub fn until(body: Body, deadline: tokio::time::Instant) -> Body {
    Deadline { inner: Some(body), sleep: Box::pin(tokio::time::sleep_until(deadline)) }.boxed_unsync()
}

struct Deadline {
    /// `None` once the deadline passed.
    inner: Option<Body>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(inner) = &mut this.inner else { return Poll::Ready(None) };
        if let Poll::Ready(r) = Pin::new(inner).poll_frame(cx) {
            return Poll::Ready(r);
        }
        ready!(this.sleep.as_mut().poll(cx));
        this.inner = None;
        Poll::Ready(Some(Err(Box::new(BodyTimedOut))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(SizeHint::default, |b| b.size_hint())
    }
}

/// How much of a mirror's answer is read (and dropped) before the rest is let go.
pub const MIRROR_ANSWER_READ: usize = MIRROR_LAG;

/// Reads `body` and drops what it reads, until its end or until more than `limit` data
/// bytes have gone by; then the body is dropped (a connection that still had more to send
/// is closed or its stream reset). Nothing read is kept: memory stays at one frame however
/// long the body, and an answer that never ends does not keep its reader alive forever.
pub async fn discard<B: HttpBody + Unpin>(mut body: B, limit: usize) {
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        seen = seen.saturating_add(frame.data_ref().map_or(0, |d| d.remaining()));
        if seen > limit {
            return;
        }
    }
}

/// Runs once when a [`Counted`] body ends or is dropped, with the byte count and trailers.
pub trait OnEnd: Send + 'static {
    /// The body is done (fully read, failed, or abandoned).
    fn done(self: Box<Self>, bytes: u64, trailers: Option<&HeaderMap>);

    /// The body failed with [`BodyTimedOut`]; [`OnEnd::done`] follows.
    fn timed_out(&mut self) {}
}

/// What a [`Counted`] body saw, shared with whoever needs to know: its data bytes, and
/// whether it failed. A request body that failed tells forwarding that an upstream error was
/// the client's doing (a malformed chunk, a body shorter than its length, a reset), not the
/// endpoint's.
#[derive(Debug, Default)]
pub struct Tally {
    bytes: AtomicU64,
    failed: AtomicBool,
}

impl Tally {
    /// Data bytes so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Counts `n` more bytes (for bytes that crossed outside the body, an upgraded connection).
    pub fn add(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Whether the body ended with an error.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

/// Counts data bytes (into a shared [`Tally`]) and calls a hook at the end.
pub struct Counted {
    inner: Body,
    tally: Arc<Tally>,
    hook: Option<Box<dyn OnEnd>>,
}

impl Counted {
    /// Wraps `inner`.
    pub fn new(inner: Body, tally: Arc<Tally>, hook: Option<Box<dyn OnEnd>>) -> Self {
        Counted { inner, tally, hook }
    }

    fn finish(&mut self, trailers: Option<&HeaderMap>) {
        if let Some(h) = self.hook.take() {
            h.done(self.tally.bytes(), trailers);
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
                    this.tally.add(d.len() as u64);
                } else if let Some(t) = f.trailers_ref() {
                    let t = t.clone();
                    this.finish(Some(&t));
                }
            }
            None => this.finish(None),
            Some(Err(e)) => {
                this.tally.failed.store(true, Ordering::Release);
                if let (Some(h), true) = (&mut this.hook, e.is::<BodyTimedOut>()) {
                    h.timed_out();
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(n: usize, size: usize) -> Body {
        let frames: VecDeque<Bytes> = (0..n).map(|_| Bytes::from(vec![b'x'; size])).collect();
        Replay { data: frames, trailers: None }.boxed_unsync()
    }

    /// Reads a body to its end: the data bytes, or the error that ended it.
    async fn read(mut b: Body) -> Result<usize, BoxError> {
        let mut n = 0;
        while let Some(f) = b.frame().await {
            n += f?.data_ref().map_or(0, Bytes::len);
        }
        Ok(n)
    }

    #[tokio::test]
    async fn every_mirror_gets_every_byte_when_it_keeps_up() {
        // 2.5 MiB, more than a mirror may lag, read by a request that lets others run between
        // frames (as a network does).
        let (mut primary, mirrors) = tee(chunks(40, 64 * 1024), 2);
        let copies: Vec<_> = mirrors.into_iter().map(|m| tokio::spawn(read(m))).collect();
        let mut n = 0;
        while let Some(f) = primary.frame().await {
            n += f.unwrap().data_ref().map_or(0, Bytes::len);
            tokio::task::yield_now().await;
        }
        assert_eq!(n, 40 * 64 * 1024);
        for c in copies {
            assert_eq!(c.await.unwrap().unwrap(), 40 * 64 * 1024);
        }
    }

    #[tokio::test]
    async fn a_mirror_too_far_behind_is_cut_off_and_the_request_is_not_held_up() {
        // 40 x 64 KiB = 2.5 MiB while the mirror reads nothing.
        let (primary, mut mirrors) = tee(chunks(40, 64 * 1024), 1);
        assert_eq!(read(primary).await.unwrap(), 40 * 64 * 1024, "the request streamed in full");
        let e = read(mirrors.remove(0)).await.unwrap_err();
        assert!(e.to_string().contains("fell behind"), "{e}");
    }

    #[tokio::test]
    async fn a_request_body_that_stops_early_fails_its_mirrors() {
        let (mut primary, mut mirrors) = tee(chunks(4, 1024), 1);
        assert!(primary.frame().await.is_some());
        drop(primary);
        let e = read(mirrors.remove(0)).await.unwrap_err();
        assert!(e.to_string().contains("did not complete"), "{e}");
    }
}
