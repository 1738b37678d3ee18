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
use crate::activity::InFlight;
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

    pub(crate) fn fault(&self) -> Option<Fault> {
        match self.failure.load(Ordering::Relaxed) {
            Self::GONE => Some(Fault::ClientGone),
            Self::IDLE => Some(Fault::ClientIdle),
            _ => None,
        }
    }

    pub(crate) fn finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// Resolves once the body has been sent completely (or failed).
    pub(crate) async fn wait_finished(&self) {
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
                this.state.fail(ClientBodyState::GONE);
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
            in_flight,
        }
    }

    pub(crate) fn backend(
        body: Incoming,
        log: Box<AccessLog>,
        conn: Option<Conn<RequestBody>>,
        idle: Duration,
        in_flight: InFlight,
    ) -> Self {
        Self {
            idle: IdleTimer::new(idle),
            source: Source::Backend(body),
            log: Some(log),
            conn,
            in_flight,
        }
    }

    fn finish(&mut self, fault: Option<Fault>) {
        if let Some(mut log) = self.log.take() {
            // The connection's watchdog cut a client that stopped reading: H28, not H27.
            let fault = match fault {
                Some(Fault::ClientGone) if self.in_flight.activity().stalled() => {
                    Some(Fault::ClientIdle)
                }
                other => other,
            };
            if fault.is_some() {
                log.fault = fault;
            }
            log.emit();
        }
        match self.conn.take() {
            Some(conn) if fault.is_none() => conn.release(),
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
            Source::Backend(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
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
