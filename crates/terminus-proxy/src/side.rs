//! The connection task's wake-ups that are not its connection's: the watchdog, the stop signal
//! and the timer that ends an HTTP/1 connection's quiet. They fire seldom, but the task is woken
//! about twice per request by its I/O, and polling a tokio timer or a watch that has not fired
//! costs as much each time (~190 instructions a timer) as when it has. They are polled with a
//! waker of their own instead, which marks that one of them fired before it wakes the task; on
//! the task's other wake-ups they are not polled at all.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Wake, Waker};

pub(crate) struct Side {
    flag: Arc<Flag>,
    waker: Waker,
}

struct Flag {
    fired: AtomicBool,
    task: OnceLock<Waker>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        if let Some(task) = self.task.get() {
            task.wake_by_ref();
        }
    }
}

impl Default for Side {
    fn default() -> Self {
        let flag = Arc::new(Flag {
            fired: AtomicBool::new(false),
            task: OnceLock::new(),
        });
        Self {
            waker: Waker::from(flag.clone()),
            flag,
        }
    }
}

impl Side {
    /// Whether one of the side sources fired since the last look (and on the first look):
    /// poll them with [`Side::waker`].
    pub(crate) fn due(&mut self, cx: &Context<'_>) -> bool {
        match self.flag.task.get() {
            None => {
                let _ = self.flag.task.set(cx.waker().clone());
                true
            }
            Some(task) if task.will_wake(cx.waker()) => {
                self.flag.fired.swap(false, Ordering::AcqRel)
            }
            // Polled with another waker than before (tokio's tasks keep theirs): a new waker
            // of our own for the new one, with which every source registers again.
            Some(_) => {
                *self = Self::default();
                self.due(cx)
            }
        }
    }

    /// Every source is looked at again on the next [`Side::due`]: a timer that was re-armed
    /// registers its new deadline only when polled.
    pub(crate) fn again(&self) {
        self.flag.fired.store(true, Ordering::Release);
    }

    /// The waker the side sources are polled with.
    pub(crate) fn waker(&self) -> &Waker {
        &self.waker
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::Poll;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_side_timer_is_polled_only_once_it_fired_and_then_wakes_the_task() {
        let mut side = Side::default();
        let mut timer = pin!(tokio::time::sleep(Duration::from_secs(5)));
        let mut looks = Vec::new();
        let mut other = pin!(tokio::time::sleep(Duration::from_secs(1)));
        // The task waits on another timer too (its I/O, say): each wake-up says whether the
        // side timer was due and, if so, whether it was ready.
        std::future::poll_fn(|cx| {
            let ready = side.due(cx).then(|| {
                let mut side_cx = Context::from_waker(side.waker());
                timer.as_mut().poll(&mut side_cx).is_ready()
            });
            looks.push(ready);
            if ready == Some(true) {
                return Poll::Ready(());
            }
            if other.as_mut().poll(cx).is_ready() {
                other
                    .as_mut()
                    .reset(tokio::time::Instant::now() + Duration::from_secs(1));
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        })
        .await;
        // The first look polls it; the other timer's wake-ups at 1..4 s do not; at 5 s its own
        // wake-up does, and it is ready.
        assert_eq!(looks.first(), Some(&Some(false)));
        assert_eq!(looks.last(), Some(&Some(true)));
        assert!(
            looks[1..looks.len() - 1].iter().all(Option::is_none),
            "{looks:?}"
        );
        assert!(looks.len() > 5, "{looks:?}");
    }

    #[test]
    fn again_marks_the_sources_due_and_a_new_task_waker_gets_a_new_side_waker() {
        let mut side = Side::default();
        let first = Waker::from(Arc::new(Noop));
        let cx = Context::from_waker(&first);
        assert!(side.due(&cx));
        assert!(!side.due(&cx));
        let before = side.waker().clone();
        side.again();
        assert!(side.due(&cx));
        assert!(!side.due(&cx));
        let second = Waker::from(Arc::new(Noop));
        let cx = Context::from_waker(&second);
        assert!(side.due(&cx));
        assert!(!side.due(&cx));
        assert!(!side.waker().will_wake(&before));
        // The new side waker wakes the new task waker and marks the sources due.
        side.waker().wake_by_ref();
        assert!(side.due(&cx));
    }

    struct Noop;

    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
}
