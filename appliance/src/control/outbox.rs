//! The control thread's outboxes: what a reactor's ring could not take yet.
//!
//! The control thread never drops a message for a reactor and never waits for a ring
//! to have room (it would stall every other reactor and the page store meanwhile).
//! A message goes on the ring when the ring has room and nothing older is waiting;
//! otherwise it joins the reactor's outbox, in order, and [`Outboxes::flush`] moves it
//! on at the control thread's next turn. The outbox of a reactor holds at most what the
//! reactor is owed (credited answers, `reactor::msg`) plus management messages.

use std::collections::VecDeque;

use crate::reactor::{ReactorHandle, ReactorMsg};

/// One outbox per reactor.
pub struct Outboxes {
    queues: Vec<VecDeque<ReactorMsg>>,
}

impl Outboxes {
    /// Empty outboxes for `n` reactors.
    pub fn new(n: usize) -> Outboxes {
        Outboxes { queues: (0..n).map(|_| VecDeque::new()).collect() }
    }

    /// Sends `msg` to reactor `r` now, or as soon as its ring has room.
    pub fn send(&mut self, reactors: &[ReactorHandle], r: usize, msg: ReactorMsg) {
        let q = &mut self.queues[r];
        if q.is_empty() {
            if let Err(msg) = reactors[r].try_send(msg) {
                q.push_back(msg);
            }
        } else {
            q.push_back(msg);
        }
    }

    /// Moves waiting messages onto the rings that have room; true when some still wait.
    pub fn flush(&mut self, reactors: &[ReactorHandle]) -> bool {
        let mut waiting = false;
        for (r, q) in self.queues.iter_mut().enumerate() {
            while let Some(msg) = q.pop_front() {
                if let Err(msg) = reactors[r].try_send(msg) {
                    q.push_front(msg);
                    waiting = true;
                    break;
                }
            }
        }
        waiting
    }

    /// Messages waiting for reactor `r`.
    pub fn waiting(&self, r: usize) -> usize {
        self.queues[r].len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn handle(ring: usize) -> (ReactorHandle, mio::Poll) {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let h = ReactorHandle {
            inbox: Arc::new(crossbeam_queue::ArrayQueue::new(ring)),
            waker,
            stats: Default::default(),
            core: None,
        };
        (h, poll)
    }

    fn barrier(m: ReactorMsg) -> u64 {
        match m {
            ReactorMsg::Barrier(g) => g,
            _ => panic!("a barrier"),
        }
    }

    #[test]
    fn a_full_ring_keeps_messages_in_order_and_loses_none() {
        let (h, _poll) = handle(2);
        let reactors = vec![h];
        let mut out = Outboxes::new(1);
        for g in 0..5 {
            out.send(&reactors, 0, ReactorMsg::Barrier(g));
        }
        assert_eq!(reactors[0].inbox.len(), 2);
        assert_eq!(out.waiting(0), 3, "what the ring could not take waits, nothing is dropped");
        assert!(out.flush(&reactors), "still full");
        let mut got: Vec<u64> = std::iter::from_fn(|| reactors[0].inbox.pop()).map(barrier).collect();
        assert!(out.flush(&reactors));
        got.extend(std::iter::from_fn(|| reactors[0].inbox.pop()).map(barrier));
        assert!(!out.flush(&reactors), "all delivered");
        got.extend(std::iter::from_fn(|| reactors[0].inbox.pop()).map(barrier));
        assert_eq!(got, vec![0, 1, 2, 3, 4], "in order");
        // A message sent while older ones wait goes behind them, not around them.
        for g in 10..13 {
            out.send(&reactors, 0, ReactorMsg::Barrier(g));
        }
        reactors[0].inbox.pop();
        out.send(&reactors, 0, ReactorMsg::Barrier(13));
        assert_eq!(out.waiting(0), 2);
    }
}
