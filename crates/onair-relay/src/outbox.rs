//! What the peers transmit, sent in as few system calls as the kernel allows. Datagrams queue
//! until the engine has polled a peer, or all peers whose timers were due (str0m sends a frame
//! written to every subscriber once time moves), then:
//! consecutive UDP datagrams from one socket to one destination, all one size but a shorter last
//! one (the packets of a video frame to one subscriber), become one segmented message (Linux UDP
//! GSO, `UDP_SEGMENT`: the kernel walks its send path once and splits the datagrams as late as it
//! can), and consecutive messages from one socket with one segment size (every subscriber's copy
//! of a frame) go in one `sendmmsg`. ICE-TCP frames go one by one. When the kernel refuses a
//! segmented send (a route whose device has no checksum offload), the outbox sends unsegmented
//! messages from then on.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
use str0m::net::Protocol;
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::metrics::RelayMetrics;
use crate::net::RelaySockets;
use crate::tcp::TcpConns;

/// At most this many datagrams in one segmented message (older kernels' `UDP_MAX_SEGMENTS`).
const MAX_SEGMENTS: usize = 64;
/// At most this many bytes in one segmented message (one IP datagram's payload).
const MAX_BYTES: usize = 65_000;
/// At most this many messages in one `sendmmsg` (the kernel takes up to 1024).
const MAX_BATCH: usize = 256;
/// A fan-out to many peers flushes whenever this many datagrams are queued.
pub(crate) const FLUSH_AT: usize = 2048;

/// A datagram waiting for the flush.
struct Queued {
    proto: Protocol,
    source: SocketAddr,
    destination: SocketAddr,
    data: Vec<u8>,
}

/// `len` queued datagrams from `start`, sent as one message (segmented when more than one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Message {
    start: usize,
    len: usize,
}

/// The datagrams queued since the last flush (see the module documentation).
#[derive(Default)]
pub(crate) struct Outbox {
    queued: Vec<Queued>,
    /// Set once the kernel refused a segmented send.
    no_gso: bool,
}

impl Outbox {
    /// Queues `data` for `destination`, from the local address `source`.
    pub(crate) fn push(&mut self, proto: Protocol, source: SocketAddr, destination: SocketAddr, data: Vec<u8>) {
        self.queued.push(Queued { proto, source, destination, data });
    }

    /// How many datagrams are queued.
    pub(crate) fn len(&self) -> usize {
        self.queued.len()
    }

    /// Sends everything queued: over UDP from the socket of its source (or ICE-TCP to its
    /// destination), one peer's datagrams in the order they were queued; counted either way.
    pub(crate) fn flush(&mut self, sockets: &RelaySockets, tcp: &TcpConns, metrics: &RelayMetrics) {
        if self.queued.is_empty() {
            return;
        }
        let queued = std::mem::take(&mut self.queued);
        let messages = split(&queued, !self.no_gso);
        let mut rest = messages.as_slice();
        while let Some(head) = rest.first() {
            let first = &queued[head.start];
            if first.proto == Protocol::Tcp {
                metrics.send_calls.inc();
                count(metrics, &queued, &rest[..1], tcp.send(first.destination, &first.data));
                rest = &rest[1..];
                continue;
            }
            let segment = segment_of(&queued, head);
            let n = rest
                .iter()
                .take(MAX_BATCH)
                .take_while(|m| {
                    let q = &queued[m.start];
                    q.proto == Protocol::Udp && q.source == first.source && segment_of(&queued, m) == segment
                })
                .count();
            let (batch, tail) = rest.split_at(n);
            rest = tail;
            let socket = sockets.sockets.iter().find(|(a, _)| *a == first.source).or_else(|| sockets.sockets.first());
            match socket {
                Some((_, socket)) => self.send_batch(socket, &queued, batch, segment, metrics),
                None => count(metrics, &queued, batch, false),
            }
        }
        // Keep the allocation for the next flush.
        self.queued = queued;
        self.queued.clear();
    }

    /// Sends `batch`, messages of one segment size, in as few `sendmmsg` calls as the kernel takes.
    fn send_batch(
        &mut self,
        socket: &UdpSocket,
        queued: &[Queued],
        batch: &[Message],
        segment: Option<u16>,
        metrics: &RelayMetrics,
    ) {
        let mut rest = batch;
        while !rest.is_empty() {
            metrics.send_calls.inc();
            match send_messages(socket, queued, rest, segment) {
                Ok(sent) => {
                    let sent = sent.clamp(1, rest.len());
                    count(metrics, queued, &rest[..sent], true);
                    rest = &rest[sent..];
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The socket's buffer is full: what is left is dropped, as a loss on the path.
                    count(metrics, queued, rest, false);
                    return;
                }
                Err(e) if segment.is_some() && is_gso_refusal(&e) => {
                    tracing::warn!(error = %e, "UDP segmentation offload refused; sending unsegmented from now on");
                    self.no_gso = true;
                    let singles: Vec<Message> = rest
                        .iter()
                        .flat_map(|m| (m.start..m.start + m.len).map(|start| Message { start, len: 1 }))
                        .collect();
                    return self.send_batch(socket, queued, &singles, None, metrics);
                }
                Err(e) => {
                    // This message's fault (say, an address the route refuses): skip it.
                    tracing::debug!(error = %e, to = %queued[rest[0].start].destination, "datagram not sent");
                    count(metrics, queued, &rest[..1], false);
                    rest = &rest[1..];
                }
            }
        }
    }
}

/// Counts `messages` as sent or dropped.
fn count(metrics: &RelayMetrics, queued: &[Queued], messages: &[Message], sent: bool) {
    let datagrams: usize = messages.iter().map(|m| m.len).sum();
    if sent {
        let bytes: usize = messages.iter().flat_map(|m| &queued[m.start..m.start + m.len]).map(|q| q.data.len()).sum();
        metrics.datagrams_out.inc_by(datagrams as u64);
        metrics.bytes_out.inc_by(bytes as u64);
    } else {
        metrics.dropped_out.inc_by(datagrams as u64);
    }
}

/// Whether `e` says the kernel cannot segment on this route (rather than that one datagram failed).
fn is_gso_refusal(e: &io::Error) -> bool {
    matches!(e.raw_os_error().map(Errno::from_raw), Some(Errno::EIO | Errno::EINVAL | Errno::EOPNOTSUPP))
}

/// `queued` cut into messages (see [`run_len`]; one datagram each without `segmented`).
fn split(queued: &[Queued], segmented: bool) -> Vec<Message> {
    let mut out = Vec::with_capacity(queued.len());
    let mut start = 0;
    while start < queued.len() {
        let len = if segmented { run_len(&queued[start..]) } else { 1 };
        out.push(Message { start, len });
        start += len;
    }
    out
}

/// The segment size of `m`: its first datagram's, when it has more than one.
fn segment_of(queued: &[Queued], m: &Message) -> Option<u16> {
    (m.len > 1).then(|| u16::try_from(queued[m.start].data.len()).ok()).flatten()
}

/// One `sendmmsg` of `messages` (each with `UDP_SEGMENT` set to `segment` when given): how many
/// messages went.
fn send_messages(
    socket: &UdpSocket,
    queued: &[Queued],
    messages: &[Message],
    segment: Option<u16>,
) -> io::Result<usize> {
    let base = messages[0].start;
    let end = messages.last().map_or(base, |m| m.start + m.len);
    let iov: Vec<IoSlice<'_>> = queued[base..end].iter().map(|q| IoSlice::new(&q.data)).collect();
    let slices: Vec<&[IoSlice<'_>]> = messages.iter().map(|m| &iov[m.start - base..m.start - base + m.len]).collect();
    let addrs: Vec<Option<SockaddrStorage>> =
        messages.iter().map(|m| Some(SockaddrStorage::from(queued[m.start].destination))).collect();
    let gso;
    let cmsgs: &[ControlMessage<'_>] = match &segment {
        Some(size) => {
            gso = [ControlMessage::UdpGsoSegments(size)];
            &gso
        }
        None => &[],
    };
    let mut headers =
        MultiHeaders::<SockaddrStorage>::preallocate(messages.len(), segment.map(|_| nix::cmsg_space!(u16)));
    socket.try_io(Interest::WRITABLE, || {
        sendmmsg(socket.as_raw_fd(), &mut headers, &slices, &addrs, cmsgs, MsgFlags::empty())
            .map(Iterator::count)
            .map_err(io::Error::from)
    })
}

/// How many datagrams at the head of `queued` go in one send: one, or a run from one source to
/// one destination over UDP whose datagrams are the first's size but a shorter last one, within
/// the kernel's limits.
fn run_len(queued: &[Queued]) -> usize {
    let Some(first) = queued.first() else { return 0 };
    let size = first.data.len();
    if first.proto != Protocol::Udp || size == 0 {
        return 1;
    }
    let mut n = 1;
    let mut bytes = size;
    for next in &queued[1..] {
        let fits = next.proto == Protocol::Udp
            && next.source == first.source
            && next.destination == first.destination
            && !next.data.is_empty()
            && next.data.len() <= size
            && bytes + next.data.len() <= MAX_BYTES
            && n < MAX_SEGMENTS;
        if !fits {
            break;
        }
        n += 1;
        bytes += next.data.len();
        if next.data.len() < size {
            break;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(to: u16, len: usize) -> Queued {
        Queued {
            proto: Protocol::Udp,
            source: "127.0.0.1:4000".parse().unwrap(),
            destination: SocketAddr::from(([127, 0, 0, 1], to)),
            data: vec![0; len],
        }
    }

    fn runs(queued: &[Queued]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut rest = queued;
        while !rest.is_empty() {
            let n = run_len(rest);
            out.push(n);
            rest = &rest[n..];
        }
        out
    }

    #[test]
    fn a_frames_packets_to_one_peer_are_one_run() {
        assert_eq!(runs(&[q(1, 1200), q(1, 1200), q(1, 1200), q(1, 700)]), vec![4]);
        assert_eq!(runs(&[q(1, 1200), q(1, 1200), q(1, 700), q(1, 1200)]), vec![3, 1], "a short one ends a run");
        assert_eq!(runs(&[q(1, 700), q(1, 1200)]), vec![1, 1], "a longer one starts a new run");
        assert_eq!(runs(&[q(1, 1200), q(2, 1200)]), vec![1, 1], "another destination starts a new run");
    }

    #[test]
    fn runs_keep_to_the_kernels_limits() {
        let many: Vec<Queued> = (0..70).map(|_| q(1, 100)).collect();
        assert_eq!(runs(&many), vec![64, 6]);
        let big: Vec<Queued> = (0..60).map(|_| q(1, 1400)).collect();
        assert_eq!(runs(&big), vec![46, 14], "65 000 bytes at most");
        let mut tcp = q(1, 1200);
        tcp.proto = Protocol::Tcp;
        assert_eq!(runs(&[tcp, q(1, 1200), q(1, 1200)]), vec![1, 2], "ICE-TCP frames go one by one");
    }

    #[tokio::test]
    async fn segmented_messages_arrive_as_the_datagrams_they_were_made_of() {
        let (rx1, rx2) = (UdpSocket::bind("127.0.0.1:0").await.unwrap(), UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = |rx: &UdpSocket| rx.local_addr().unwrap().port();
        // One frame's packets to each of two subscribers: two messages of one segment size.
        let mut queued = Vec::new();
        for (port, tag) in [(to(&rx1), 0u8), (to(&rx2), 10)] {
            for (i, len) in [1200, 1200, 1200, 333].into_iter().enumerate() {
                queued.push(Queued { data: vec![tag + u8::try_from(i).unwrap(); len], ..q(port, 0) });
            }
        }
        let messages = split(&queued, true);
        assert_eq!(messages, vec![Message { start: 0, len: 4 }, Message { start: 4, len: 4 }]);
        tx.writable().await.unwrap();
        let sent = send_messages(&tx, &queued, &messages, Some(1200)).expect("loopback takes segmented sends");
        assert_eq!(sent, 2);
        let mut buf = [0u8; 2048];
        for (rx, want) in [(&rx1, &queued[..4]), (&rx2, &queued[4..])] {
            for (i, want) in want.iter().enumerate() {
                let got = tokio::time::timeout(std::time::Duration::from_secs(2), rx.recv_from(&mut buf));
                let (n, _) = got.await.unwrap().unwrap();
                assert_eq!(&buf[..n], want.data.as_slice(), "datagram {i}");
            }
        }
    }

    #[tokio::test]
    async fn a_flush_sends_everything_queued_and_counts_it() {
        let sockets = RelaySockets::bind(&["127.0.0.1".parse().unwrap()], 0).await.unwrap();
        let source = sockets.addrs()[0];
        sockets.sockets[0].1.writable().await.unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        let metrics = RelayMetrics::default();
        let mut outbox = Outbox::default();
        // A frame (three packets), then an audio packet, then a tiny RTCP one.
        for len in [1100, 1100, 500, 200, 60] {
            outbox.push(Protocol::Udp, source, to, vec![7; len]);
        }
        outbox.flush(&sockets, &TcpConns::default(), &metrics);
        assert_eq!(outbox.len(), 0);
        assert_eq!(metrics.datagrams_out.get(), 5);
        assert_eq!(metrics.bytes_out.get(), 2960);
        assert_eq!(metrics.send_calls.get(), 2, "the frame in one message, the two others (a shorter last) in another");
        let mut buf = [0u8; 2048];
        for len in [1100, 1100, 500, 200, 60] {
            let got = tokio::time::timeout(std::time::Duration::from_secs(2), rx.recv_from(&mut buf));
            assert_eq!(got.await.unwrap().unwrap().0, len, "in the order queued");
        }
    }
}
