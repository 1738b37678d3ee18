//! HTTP/2 streams run on their connection's own task.
//!
//! hyper hands each HTTP/2 stream to an executor. Spawned as tasks of their own, every stream
//! costs a task allocation, a trip through the scheduler to start, and another wake-up hop each
//! time it answers (the stream's task wakes the connection's task to send its frames). Polled
//! beside the connection instead, a stream starts at once and its frames go out in the same
//! poll. [`StreamExec`] is the executor hyper is given; while a connection is polled through
//! [`Streams::poll_with`], what hyper spawns is collected into that connection's set. Anything
//! spawned outside such a poll (hyper spawns nothing else today) goes to tokio as before.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};

type Stream = Pin<Box<dyn Future<Output = ()> + Send>>;

thread_local! {
    /// The streams spawned during the connection poll running on this thread, if any.
    static SPAWNED: RefCell<Option<Vec<Stream>>> = const { RefCell::new(None) };
}

/// The executor the HTTP server builders are given.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StreamExec;

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        SPAWNED.with(|spawned| match spawned.borrow_mut().as_mut() {
            Some(streams) => streams.push(Box::pin(fut)),
            None => {
                tokio::spawn(fut);
            }
        });
    }
}

/// A connection's streams.
#[derive(Default)]
pub(crate) struct Streams(FuturesUnordered<Stream>);

impl Streams {
    /// Polls the connection, taking in the streams it spawns, then every stream that is ready.
    /// The connection's output is returned as soon as it has one; streams still running then
    /// are finished on a task of their own when `self` is dropped.
    pub(crate) fn poll_with<C: Future>(
        &mut self,
        conn: Pin<&mut C>,
        cx: &mut Context<'_>,
    ) -> Poll<C::Output> {
        let out = {
            let _collecting = Collecting::start();
            let out = conn.poll(cx);
            for stream in Collecting::take() {
                self.0.push(stream);
            }
            out
        };
        // Returns when every stream is pending (each has registered its wake-up, which wakes
        // this task) or none is left. FuturesUnordered yields now and then on its own, after
        // waking the task, so a busy connection cannot hold the thread.
        while let Poll::Ready(Some(())) = self.0.poll_next_unpin(cx) {}
        out
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        let mut rest = std::mem::take(&mut self.0);
        if rest.is_empty() {
            return;
        }
        // As spawned streams would: the responses in progress finish (or fail) on their own.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { while rest.next().await.is_some() {} });
        }
    }
}

/// Makes [`StreamExec`] collect on this thread until dropped, restoring what was there before
/// (also when the poll panics).
struct Collecting(Option<Vec<Stream>>);

impl Collecting {
    fn start() -> Self {
        Self(SPAWNED.with(|s| s.replace(Some(Vec::new()))))
    }

    fn take() -> Vec<Stream> {
        SPAWNED.with(|s| {
            s.borrow_mut()
                .as_mut()
                .map(std::mem::take)
                .unwrap_or_default()
        })
    }
}

impl Drop for Collecting {
    fn drop(&mut self) {
        let previous = self.0.take();
        SPAWNED.with(|s| *s.borrow_mut() = previous);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn spawned_during_a_poll_run_on_the_polling_task() {
        let ran = Arc::new(AtomicUsize::new(0));
        let mut streams = Streams::default();
        let counter = ran.clone();
        let conn = std::future::poll_fn(move |_| {
            let counter = counter.clone();
            StreamExec.execute(async move {
                counter.fetch_add(1, Ordering::SeqCst);
            });
            Poll::Ready(())
        });
        tokio::pin!(conn);
        std::future::poll_fn(|cx| streams.poll_with(conn.as_mut(), cx)).await;
        // Run in the same poll, with no other task involved.
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert!(SPAWNED.with(|s| s.borrow().is_none()));
    }

    #[tokio::test]
    async fn outside_a_poll_it_spawns_and_leftovers_finish_after_drop() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        StreamExec.execute(async move {
            let _ = tx.send(());
        });
        rx.await.unwrap();

        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
        let mut streams = Streams::default();
        let mut slot = Some((wait, done_tx));
        let conn = std::future::poll_fn(move |_| {
            if let Some((wait, done_tx)) = slot.take() {
                StreamExec.execute(async move {
                    let _ = wait.await;
                    let _ = done_tx.send(());
                });
            }
            Poll::Ready(())
        });
        tokio::pin!(conn);
        std::future::poll_fn(|cx| streams.poll_with(conn.as_mut(), cx)).await;
        drop(streams);
        release.send(()).unwrap();
        done.await.unwrap();
    }
}
