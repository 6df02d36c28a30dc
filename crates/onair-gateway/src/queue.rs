//! One socket's outgoing queue, bounded in messages and in bytes, so a client that stops
//! reading costs a bounded amount of memory: past the bound (or when one frame takes longer
//! than [`SEND_TIMEOUT`] to go out) the socket is closed with 4008 instead of buffering more.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Messages one socket's queue holds.
pub const MAX_QUEUED: usize = 256;
/// Bytes of text one socket's queue holds (a few large SDP offers fit; 600 × 64 KiB signals do not).
pub const MAX_QUEUED_BYTES: usize = 1024 * 1024;
/// Longest one frame may take to reach the client's TCP stack before the client counts as not reading.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// What a socket task is asked to do.
#[derive(Debug, Clone)]
pub enum Out {
    /// Send this JSON text.
    Text(String),
    /// Close with this code and reason.
    Close(u16, &'static str),
}

/// The hub's side of a socket's queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct SocketTx {
    tx: mpsc::Sender<Out>,
    queued: Arc<AtomicUsize>,
    too_slow: CancellationToken,
}

/// The socket task's side.
#[derive(Debug)]
pub struct SocketRx {
    rx: mpsc::Receiver<Out>,
    queued: Arc<AtomicUsize>,
    /// Fires when the client fell behind: the task closes the socket with 4008.
    pub too_slow: CancellationToken,
}

/// A new, empty queue.
pub fn socket_queue() -> (SocketTx, SocketRx) {
    let (tx, rx) = mpsc::channel(MAX_QUEUED);
    let (queued, too_slow) = (Arc::new(AtomicUsize::new(0)), CancellationToken::new());
    (SocketTx { tx, queued: Arc::clone(&queued), too_slow: too_slow.clone() }, SocketRx { rx, queued, too_slow })
}

impl SocketTx {
    /// Queues `out`; if that would pass a bound, drops it and marks the client too slow.
    pub fn send(&self, out: Out) {
        let len = match &out {
            Out::Text(t) => t.len(),
            Out::Close(..) => 0,
        };
        if self.queued.fetch_add(len, Ordering::Relaxed) + len > MAX_QUEUED_BYTES {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            self.too_slow.cancel();
            return;
        }
        if let Err(e) = self.tx.try_send(out) {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            if matches!(e, mpsc::error::TrySendError::Full(_)) {
                self.too_slow.cancel();
            }
        }
    }
}

impl SocketRx {
    /// The next queued message (its bytes leave the budget as it is taken).
    pub async fn recv(&mut self) -> Option<Out> {
        let out = self.rx.recv().await?;
        if let Out::Text(t) = &out {
            self.queued.fetch_sub(t.len(), Ordering::Relaxed);
        }
        Some(out)
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
        assert_eq!(rx.queued.load(Ordering::Relaxed), MAX_QUEUED_BYTES - big.len());
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
}
