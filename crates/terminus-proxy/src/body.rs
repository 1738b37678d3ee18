//! Bodies streamed through the router, never buffered whole.
//!
//! [`RequestBody`] carries the client's body to the backend and enforces the client-side idle
//! window (H28). [`ResponseBody`] carries the backend's body (or a small local error body) to the
//! client, enforces the backend-side idle window (H15), counts bytes, hands the backend connection
//! back to the pool when the response ends, and writes the request's log line exactly once:
//! at the end, on a backend error (H18/H15), or when the client goes away (H27).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::access_log::AccessLog;
use crate::activity::{Cut, InFlight};
use crate::fault::Fault;
use crate::pool::Conn;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client side of a request body, shared with the request handler: whether it has been
/// sent completely (the first-byte timeout starts then) and why it failed, if it did.
#[derive(Debug, Default)]
pub(crate) struct ClientBodyState {
    failure: AtomicU8,
    finished: AtomicBool,
    done: tokio::sync::Notify,
}

impl ClientBodyState {
    const GONE: u8 = 1;
    const IDLE: u8 = 2;
    /// The body did not parse (a malformed chunk): a bad request, not a client gone.
    const MALFORMED: u8 = 3;

    pub(crate) fn fault(&self) -> Option<Fault> {
        match self.failure.load(Ordering::Relaxed) {
            Self::GONE => Some(Fault::ClientGone),
            Self::IDLE => Some(Fault::ClientIdle),
            Self::MALFORMED => Some(Fault::BadRequest("bad_chunk")),
            _ => None,
        }
    }

    /// Sent completely: the backend connection may carry another request.
    fn complete(&self) -> bool {
        self.finished() && self.failure.load(Ordering::Relaxed) == 0
    }

    pub(crate) fn finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// Resolves once the body has been sent completely (or failed).
    pub(crate) async fn wait_finished(&self) {
        // Most requests have no body, finished when the request was made: no waiter to enlist.
        if self.finished() {
            return;
        }
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.finished() || self.fault().is_some() {
                return;
            }
            notified.await;
        }
    }

    fn finish(&self) {
        self.finished.store(true, Ordering::Release);
        self.done.notify_waiters();
    }

    fn fail(&self, why: u8) {
        self.failure.store(why, Ordering::Relaxed);
        self.done.notify_waiters();
    }
}

/// A rolling idle timer, armed only when a body actually waits.
#[derive(Debug)]
struct IdleTimer {
    after: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    progressed: bool,
}

impl IdleTimer {
    fn new(after: Duration) -> Self {
        Self {
            after,
            sleep: None,
            progressed: false,
        }
    }

    fn progress(&mut self) {
        self.progressed = true;
    }

    /// Called when the body is pending: true once the window has passed with no progress.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = Instant::now() + self.after;
        match &mut self.sleep {
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            Some(sleep) if self.progressed => sleep.as_mut().reset(deadline),
            Some(_) => {}
        }
        self.progressed = false;
        self.sleep
            .as_mut()
            .is_some_and(|s| s.as_mut().poll(cx).is_ready())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BodyError(&'static str);

pub(crate) struct RequestBody {
    inner: Incoming,
    idle: IdleTimer,
    state: Arc<ClientBodyState>,
}

impl RequestBody {
    pub(crate) fn new(inner: Incoming, idle: Duration, state: Arc<ClientBodyState>) -> Self {
        if inner.is_end_stream() {
            state.finish();
        }
        Self {
            inner,
            idle: IdleTimer::new(idle),
            state,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progress();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.state.fail(if is_malformed(&e) {
                    ClientBodyState::MALFORMED
                } else {
                    ClientBodyState::GONE
                });
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.state.finish();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.idle.expired(cx) {
                    this.state.fail(ClientBodyState::IDLE);
                    return Poll::Ready(Some(Err(Box::new(BodyError(
                        "client sent no request body data within the idle timeout",
                    )))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// hyper reports a body that does not parse (chunk sizes, extensions, trailers) as invalid
/// data or input; a client that went away is an unexpected end or a reset.
fn is_malformed(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            );
        }
        source = inner.source();
    }
    false
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody").finish_non_exhaustive()
    }
}

enum Source {
    Local(Option<Bytes>),
    Backend(Incoming),
}

/// The response body, which also owns the request's log line and keeps the request counted as
/// in flight on its connection until it is done.
pub(crate) struct ResponseBody {
    source: Source,
    idle: IdleTimer,
    log: Option<Box<AccessLog>>,
    conn: Option<Conn<RequestBody>>,
    /// The request body's fate: its backend connection is reused only if it was sent whole.
    request: Option<Arc<ClientBodyState>>,
    in_flight: InFlight,
}

impl ResponseBody {
    pub(crate) fn local(
        text: Bytes,
        log: Box<AccessLog>,
        idle: Duration,
        in_flight: InFlight,
    ) -> Self {
        Self {
            idle: IdleTimer::new(idle),
            source: Source::Local(Some(text)),
            log: Some(log),
            conn: None,
            request: None,
            in_flight,
        }
    }

    pub(crate) fn backend(
        body: Incoming,
        log: Box<AccessLog>,
        conn: Option<Conn<RequestBody>>,
        request: Arc<ClientBodyState>,
        idle: Duration,
        in_flight: InFlight,
    ) -> Self {
        Self {
            idle: IdleTimer::new(idle),
            source: Source::Backend(body),
            log: Some(log),
            conn,
            request: Some(request),
            in_flight,
        }
    }

    fn finish(&mut self, fault: Option<Fault>) {
        let request_fault = self.request.as_ref().and_then(|r| r.fault());
        if let Some(mut log) = self.log.take() {
            let activity = self.in_flight.activity();
            let fault = match fault {
                // The connection's watchdog cut a client that stopped reading: H28, not H27.
                Some(Fault::ClientGone) if activity.cut() == Cut::Stalled => {
                    Some(Fault::ClientIdle)
                }
                // The backend gave up while the client had long stopped reading (so the router
                // had stopped reading the backend): the client stalled first.
                Some(Fault::BackendInterrupted | Fault::BackendIdle)
                    if activity
                        .blocked_for(Instant::now())
                        .is_some_and(|b| b >= self.idle.after / 4) =>
                {
                    Some(Fault::ClientIdle)
                }
                None => request_fault.filter(|f| matches!(f, Fault::BadRequest(_))),
                other => other,
            };
            if fault.is_some() {
                log.fault = fault;
            }
            log.emit();
        }
        let reusable = fault.is_none() && self.request.as_ref().is_none_or(|r| r.complete());
        match self.conn.take() {
            Some(conn) if reusable => conn.release(),
            _ => {}
        }
    }

    fn count(&mut self, frame: &Frame<Bytes>) {
        if let (Some(data), Some(log)) = (frame.data_ref(), self.log.as_mut()) {
            log.bytes += data.len() as u64;
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.source {
            Source::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            // The backend connection, until it goes back to the pool, is polled here first.
            Source::Backend(body) => match &mut this.conn {
                Some(conn) => conn.poll_through(cx, |cx| Pin::new(&mut *body).poll_frame(cx)),
                None => Pin::new(body).poll_frame(cx),
            }
            .map_err(BoxError::from),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progress();
                this.count(&frame);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(Some(Fault::BackendInterrupted));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.finish(None);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.idle.expired(cx) {
                    this.finish(Some(Fault::BackendIdle));
                    return Poll::Ready(Some(Err(Box::new(BodyError(
                        "backend sent no response data within the idle timeout",
                    )))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Local(bytes) => bytes.is_none(),
            Source::Backend(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Local(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Source::Local(None) => SizeHint::with_exact(0),
            Source::Backend(body) => body.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if self.log.is_none() {
            return;
        }
        // A body with nothing left (HEAD, 204, 304, or fully sent) finished normally even if the
        // server never polled it to the end; anything else means the client went away.
        if self.is_end_stream() {
            self.finish(None);
        } else {
            self.finish(Some(Fault::ClientGone));
        }
    }
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}
