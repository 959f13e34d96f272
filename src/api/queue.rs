//! The bounded queue between the receive path and one subscription's
//! reader (generic: it knows nothing about what it carries).
//!
//! Owns: handing deliveries over in bursts. The receive path pushes without
//! waking the reader and wakes it once per drain ([`Feed::flush`]) or when
//! the queue is full; the reader takes everything queued under one lock and
//! hands it out from its own buffer, which frees the queue's room at once.
//! So at most `capacity` deliveries wait in the queue and as many again in
//! the reader's hands.
//!
//! Why not tokio's mpsc: it takes a permit and wakes the reader per event,
//! and a reader faster than the receive path empties it after every event,
//! parks and is woken again — at 1.6 M events/s the subscriber's thread was
//! woken ~13 k times a second and the channel's semaphore and waker were
//! ~10 % of the subscribing process's CPU (perf, benches/peers).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    /// Live [`Feed`]s: the reader sees the end once none is left.
    feeds: AtomicUsize,
}

struct State<T> {
    items: VecDeque<T>,
    /// Something was pushed since the reader was last woken.
    unwoken: bool,
    /// Every feed is gone: the reader ends once it has taken what is queued.
    closed: bool,
    /// The reader is gone: pushes are refused.
    reader_gone: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

/// Why a delivery was not queued.
pub(crate) enum Refused<T> {
    /// The queue is full (the reader has been woken): wait with [`Feed::push`].
    Full(Box<T>),
    /// The reader is gone.
    Gone,
}

/// A new queue holding at most `capacity` deliveries (at least one).
pub(crate) fn queue<T>(capacity: usize) -> (Feed<T>, Reader<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            unwoken: false,
            closed: false,
            reader_gone: false,
            reader: None,
            writer: None,
        }),
        capacity: capacity.max(1),
        feeds: AtomicUsize::new(1),
    });
    (
        Feed {
            shared: shared.clone(),
        },
        Reader {
            shared,
            taken: VecDeque::new(),
        },
    )
}

/// The receive path's end of a queue.
pub(crate) struct Feed<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Feed<T> {
    /// Queues `item` without waking the reader (see [`Feed::flush`]);
    /// a full queue wakes it and gives the delivery back.
    pub(crate) fn try_push(&self, item: T) -> Result<(), Refused<T>> {
        let mut s = self.shared.state.lock();
        if s.reader_gone {
            return Err(Refused::Gone);
        }
        if s.items.len() >= self.shared.capacity {
            let reader = s.reader.take();
            s.unwoken = false;
            drop(s);
            if let Some(w) = reader {
                w.wake();
            }
            return Err(Refused::Full(Box::new(item)));
        }
        s.items.push_back(item);
        s.unwoken = true;
        Ok(())
    }

    /// Queues `item` once there is room; `Err` if the reader is gone.
    pub(crate) async fn push(&self, item: T) -> Result<(), T> {
        let mut item = Some(item);
        std::future::poll_fn(|cx| {
            let mut s = self.shared.state.lock();
            let r = item.take().expect("polled after completion");
            if s.reader_gone {
                return Poll::Ready(Err(r));
            }
            if s.items.len() < self.shared.capacity {
                s.items.push_back(r);
                s.unwoken = true;
                return Poll::Ready(Ok(()));
            }
            item = Some(r);
            if !s.writer.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                s.writer = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// Wakes the reader if something was queued since it was last woken.
    pub(crate) fn flush(&self) {
        let mut s = self.shared.state.lock();
        if !std::mem::take(&mut s.unwoken) {
            return;
        }
        let reader = s.reader.take();
        drop(s);
        if let Some(w) = reader {
            w.wake();
        }
    }
}

impl<T> Clone for Feed<T> {
    fn clone(&self) -> Self {
        self.shared.feeds.fetch_add(1, Ordering::Relaxed);
        Feed {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Feed<T> {
    fn drop(&mut self) {
        if self.shared.feeds.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let mut s = self.shared.state.lock();
        s.closed = true;
        let reader = s.reader.take();
        drop(s);
        if let Some(w) = reader {
            w.wake();
        }
    }
}

/// The subscription's end of a queue.
pub(crate) struct Reader<T> {
    shared: Arc<Shared<T>>,
    /// What was taken from the queue and not handed out yet.
    taken: VecDeque<T>,
}

impl<T> Reader<T> {
    /// The next delivery; `None` once every feed is gone and all is taken.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if let Some(r) = self.taken.pop_front() {
            return Poll::Ready(Some(r));
        }
        let mut s = self.shared.state.lock();
        if !s.items.is_empty() {
            std::mem::swap(&mut self.taken, &mut s.items);
            let writer = s.writer.take();
            drop(s);
            if let Some(w) = writer {
                w.wake();
            }
            return Poll::Ready(self.taken.pop_front());
        }
        if s.closed {
            return Poll::Ready(None);
        }
        if !s.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.reader = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl<T> Drop for Reader<T> {
    fn drop(&mut self) {
        let mut s = self.shared.state.lock();
        s.reader_gone = true;
        let queued = std::mem::take(&mut s.items);
        let writer = s.writer.take();
        drop(s);
        drop(queued);
        if let Some(w) = writer {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::task::noop_waker;
    use std::future::Future;
    use std::sync::atomic::AtomicBool;
    use std::task::Wake;

    #[derive(Default)]
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn woken() -> (Arc<Flag>, Waker) {
        let flag = Arc::new(Flag::default());
        (flag.clone(), Waker::from(flag))
    }

    fn seq(p: Poll<Option<u64>>) -> Option<u64> {
        match p {
            Poll::Ready(Some(n)) => Some(n),
            _ => None,
        }
    }

    #[test]
    fn the_reader_is_woken_once_per_flush_not_per_push() {
        let (feed, mut reader) = queue::<u64>(16);
        let (flag, waker) = woken();
        let mut cx = Context::from_waker(&waker);
        assert!(reader.poll_recv(&mut cx).is_pending());
        for s in 1..=3 {
            assert!(feed.try_push(s).is_ok());
        }
        assert!(!flag.0.load(Ordering::SeqCst), "woken before the flush");
        feed.flush();
        assert!(flag.0.load(Ordering::SeqCst));
        let got: Vec<_> = (0..3)
            .filter_map(|_| seq(reader.poll_recv(&mut cx)))
            .collect();
        assert_eq!(got, [1, 2, 3]);
        assert!(reader.poll_recv(&mut cx).is_pending());
    }

    #[test]
    fn a_full_queue_wakes_the_reader_and_its_take_frees_the_room() {
        let (feed, mut reader) = queue::<u64>(2);
        let (flag, waker) = woken();
        let mut cx = Context::from_waker(&waker);
        assert!(reader.poll_recv(&mut cx).is_pending());
        assert!(feed.try_push(1).is_ok());
        assert!(feed.try_push(2).is_ok());
        let Err(Refused::Full(back)) = feed.try_push(3) else {
            panic!("a third fits in a queue of two");
        };
        assert_eq!(*back, 3);
        assert!(
            flag.0.load(Ordering::SeqCst),
            "a full queue wakes its reader"
        );
        // A waiting push completes once the reader has taken what is queued.
        let mut push = Box::pin(feed.push(*back));
        let (wflag, wwaker) = woken();
        let mut wcx = Context::from_waker(&wwaker);
        assert!(push.as_mut().poll(&mut wcx).is_pending());
        assert_eq!(seq(reader.poll_recv(&mut cx)), Some(1));
        assert!(wflag.0.load(Ordering::SeqCst), "the take wakes the writer");
        assert!(matches!(push.as_mut().poll(&mut wcx), Poll::Ready(Ok(()))));
        let got: Vec<_> = (0..2)
            .filter_map(|_| seq(reader.poll_recv(&mut cx)))
            .collect();
        assert_eq!(got, [2, 3]);
    }

    #[test]
    fn the_reader_ends_after_what_is_queued_once_every_feed_is_gone() {
        let (feed, mut reader) = queue::<u64>(4);
        let other = feed.clone();
        feed.try_push(1).ok().unwrap();
        drop(feed);
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(seq(reader.poll_recv(&mut cx)), Some(1));
        assert!(reader.poll_recv(&mut cx).is_pending(), "a feed is left");
        drop(other);
        assert!(matches!(reader.poll_recv(&mut cx), Poll::Ready(None)));
    }

    #[test]
    fn a_gone_reader_refuses_pushes_and_releases_a_waiting_writer() {
        let (feed, reader) = queue::<u64>(1);
        feed.try_push(1).ok().unwrap();
        let mut push = Box::pin(feed.push(2));
        let (wflag, wwaker) = woken();
        let mut wcx = Context::from_waker(&wwaker);
        assert!(push.as_mut().poll(&mut wcx).is_pending());
        drop(reader);
        assert!(wflag.0.load(Ordering::SeqCst));
        assert!(matches!(push.as_mut().poll(&mut wcx), Poll::Ready(Err(_))));
        assert!(matches!(feed.try_push(3), Err(Refused::Gone)));
    }
}
