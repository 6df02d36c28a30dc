//! One socket's outgoing queue, bounded in messages and in bytes, so a client that stops
//! reading costs a bounded amount of memory: past the bound (or when one frame takes longer
//! than [`SEND_TIMEOUT`] to go out) the socket is closed with 4008 instead of buffering more.
//!
//! It is a `VecDeque` behind a mutex with a `Notify`, not a tokio `mpsc` channel: an idle socket's
//! queue then costs its `Arc` alone (about 200 bytes), where a channel allocates its first block of
//! 32 slots up front (about 1.3 KiB per socket, 25 MiB at 19 000 idle sockets).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Messages one socket's queue holds.
pub const MAX_QUEUED: usize = 256;
/// Bytes of text one socket's queue holds (a few large SDP offers fit; 600 × 64 KiB signals do not).
pub const MAX_QUEUED_BYTES: usize = 1024 * 1024;
/// Longest one frame may take to reach the client's TCP stack before the client counts as not reading.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// A drained queue keeps at most this many slots of the room a burst gave it.
const KEEP_SLOTS: usize = 8;

/// What a socket task is asked to do.
#[derive(Debug, Clone)]
pub enum Out {
    /// Send this JSON text.
    Text(String),
    /// Close with this code and reason.
    Close(u16, &'static str),
}

impl Out {
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Text(t) => t.len(),
            Self::Close(..) => 0,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Out>,
    bytes: usize,
    /// Live `SocketTx` handles; none left (and nothing queued) ends the socket task's `recv`.
    senders: usize,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    ready: Notify,
    too_slow: CancellationToken,
}

/// The hub's side of a socket's queue; cheap to clone.
#[derive(Debug)]
pub struct SocketTx {
    shared: Arc<Shared>,
}

/// The socket task's side.
#[derive(Debug)]
pub struct SocketRx {
    shared: Arc<Shared>,
    /// Fires when the client fell behind: the task closes the socket with 4008.
    pub too_slow: CancellationToken,
}

/// A new, empty queue.
pub fn socket_queue() -> (SocketTx, SocketRx) {
    let too_slow = CancellationToken::new();
    let state = State { senders: 1, ..State::default() };
    let shared = Arc::new(Shared { state: Mutex::new(state), ready: Notify::new(), too_slow: too_slow.clone() });
    (SocketTx { shared: Arc::clone(&shared) }, SocketRx { shared, too_slow })
}

impl Clone for SocketTx {
    fn clone(&self) -> Self {
        self.shared.state.lock().senders += 1;
        Self { shared: Arc::clone(&self.shared) }
    }
}

impl Drop for SocketTx {
    fn drop(&mut self) {
        let last = {
            let mut st = self.shared.state.lock();
            st.senders -= 1;
            st.senders == 0
        };
        if last {
            self.shared.ready.notify_one();
        }
    }
}

impl SocketTx {
    /// Queues `out`; if that would pass a bound, drops it and marks the client too slow.
    pub fn send(&self, out: Out) {
        let len = out.len();
        {
            let mut st = self.shared.state.lock();
            if st.items.len() >= MAX_QUEUED || st.bytes + len > MAX_QUEUED_BYTES {
                drop(st);
                self.shared.too_slow.cancel();
                return;
            }
            st.bytes += len;
            st.items.push_back(out);
        }
        self.shared.ready.notify_one();
    }
}

impl SocketRx {
    /// The next queued message (its bytes leave the budget as it is taken); `None` once every
    /// sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<Out> {
        loop {
            {
                let mut st = self.shared.state.lock();
                if let Some(out) = st.items.pop_front() {
                    st.bytes -= out.len();
                    if st.items.is_empty() && st.items.capacity() > KEEP_SLOTS {
                        st.items.shrink_to(KEEP_SLOTS);
                    }
                    return Some(out);
                }
                if st.senders == 0 {
                    return None;
                }
            }
            // A send between the check and here left a permit: this returns at once.
            self.shared.ready.notified().await;
        }
    }

    /// Bytes queued now.
    #[cfg(test)]
    fn queued_bytes(&self) -> usize {
        self.shared.state.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_past_its_byte_bound_marks_the_client_too_slow() {
        let (tx, mut rx) = socket_queue();
        let big = "x".repeat(64 * 1024);
        for _ in 0..(MAX_QUEUED_BYTES / big.len()) {
            tx.send(Out::Text(big.clone()));
        }
        assert!(!rx.too_slow.is_cancelled(), "exactly the bound still fits");
        tx.send(Out::Text(big.clone()));
        assert!(rx.too_slow.is_cancelled());
        // Taking messages gives their bytes back.
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            assert!(matches!(rx.recv().await, Some(Out::Text(_))));
        });
        assert_eq!(rx.queued_bytes(), MAX_QUEUED_BYTES - big.len());
    }

    #[test]
    fn a_queue_past_its_message_bound_marks_the_client_too_slow() {
        let (tx, rx) = socket_queue();
        for _ in 0..MAX_QUEUED {
            tx.send(Out::Close(1000, "x"));
        }
        assert!(!rx.too_slow.is_cancelled());
        tx.send(Out::Text("one more".into()));
        assert!(rx.too_slow.is_cancelled());
    }

    #[test]
    fn recv_waits_for_a_send_and_ends_when_every_sender_is_gone() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            let (tx, mut rx) = socket_queue();
            let other = tx.clone();
            let waiter = tokio::spawn(async move {
                let first = rx.recv().await;
                let second = rx.recv().await;
                let end = rx.recv().await;
                (first.is_some(), second.is_some(), end.is_none())
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
            tx.send(Out::Text("a".into()));
            drop(tx);
            tokio::time::sleep(Duration::from_millis(10)).await;
            other.send(Out::Close(1000, "bye"));
            drop(other);
            let got = tokio::time::timeout(Duration::from_secs(2), waiter).await.unwrap().unwrap();
            assert_eq!(got, (true, true, true), "both messages, then the end");
        });
    }
}
