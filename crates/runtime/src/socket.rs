//! The HTTP port's TCP connections, writable from outside their connection's task.
//!
//! ws-push sends one push to thousands of browsers. Waking each connection's task to
//! write one frame costs more than the write itself, so its fan-out queues the same
//! encoded frame on every socket ([`Socket::queue`]) and flush tasks write each
//! socket's queue with one system call ([`Socket::try_flush`]); frames that
//! arrive while a socket is busy are coalesced into its next write. What hyper or a
//! WebSocket library writes on the same connection goes through the same queue, so
//! bytes from the two never interleave.
//!
//! A handler finds its connection's socket in [`Peer`], the connect info of every
//! request on the HTTP port. Reads go to the stream's own read half ([`SocketIo`]),
//! which fills the caller's buffer without zeroing it first (a zeroed HTTP read
//! buffer would make every idle connection's pages resident).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// How many queued buffers one write hands the kernel.
const MAX_SLICES: usize = 64;

/// What a writer may leave queued before its own writes wait for the socket
/// (hyper and WebSocket libraries expect a write to push back at some point).
const WRITE_BACKPRESSURE_BYTES: usize = 64 * 1024;

/// The writing side of one accepted TCP connection of the HTTP port (cheap to clone:
/// a shared handle).
#[derive(Debug, Clone)]
pub struct Socket(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    stream: OwnedWriteHalf,
    out: Mutex<Out>,
}

/// One accepted connection as hyper sees it: its read half, and its [`Socket`] for
/// writing.
#[derive(Debug)]
pub struct SocketIo {
    read: OwnedReadHalf,
    socket: Socket,
}

impl SocketIo {
    /// Wraps an accepted stream.
    pub fn new(stream: TcpStream) -> Self {
        let (read, write) = stream.into_split();
        Self {
            read,
            socket: Socket(Arc::new(Shared {
                stream: write,
                out: Mutex::default(),
            })),
        }
    }

    /// The connection's writing side.
    pub fn socket(&self) -> &Socket {
        &self.socket
    }
}

/// Bytes accepted but not yet taken by the kernel, in order.
#[derive(Debug, Default)]
struct Out {
    queue: VecDeque<Bytes>,
    bytes: usize,
    /// Part of the front buffer was written (it cannot be dropped any more).
    started: bool,
    /// A flush of this socket is scheduled or a writer is waiting for it.
    owned: bool,
}

/// What [`Socket::queue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    /// Bytes queued now, this frame included.
    pub bytes: usize,
    /// Nobody was going to write this socket: the caller must [`Socket::try_flush`] it.
    pub needs_flush: bool,
}

impl Socket {
    fn out(&self) -> MutexGuard<'_, Out> {
        // Nothing panics while holding it, and a queue is consistent between calls.
        self.0.out.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a whole frame after everything accepted before it, without writing.
    pub fn queue(&self, frame: Bytes) -> Queued {
        let mut out = self.out();
        if !frame.is_empty() {
            out.push(frame);
        }
        let needs_flush = !out.owned;
        out.owned = true;
        Queued {
            bytes: out.bytes,
            needs_flush,
        }
    }

    /// Writes as much of the queue as the kernel takes now, in one system call when
    /// it fits. `Ok(true)`: nothing is left. `Ok(false)`: the socket is full and the
    /// caller must [`Socket::flush_queued`] (or hand that to whoever can wait).
    pub fn try_flush(&self) -> io::Result<bool> {
        let mut out = self.out();
        let done = self.write_out(&mut out)?;
        out.owned = !done;
        Ok(done)
    }

    /// Waits until everything queued is written.
    pub async fn flush_queued(&self) -> io::Result<()> {
        loop {
            {
                let mut out = self.out();
                if self.write_out(&mut out)? {
                    out.owned = false;
                    return Ok(());
                }
                out.owned = true;
            }
            self.0.stream.writable().await?;
        }
    }

    /// Bytes accepted and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.out().bytes
    }

    /// Drops every queued buffer not yet begun (a frame half written is kept, so
    /// what follows, such as a close frame, still parses).
    pub fn discard_unstarted(&self) {
        let mut out = self.out();
        let keep = usize::from(out.started && !out.queue.is_empty());
        out.queue.truncate(keep);
        out.bytes = out.queue.iter().map(Bytes::len).sum();
    }

    /// Writes the queue until it is empty (`Ok(true)`) or the kernel would block.
    fn write_out(&self, out: &mut Out) -> io::Result<bool> {
        while !out.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let count = out.queue.len().min(MAX_SLICES);
            for (slice, buffer) in slices.iter_mut().zip(out.queue.iter()) {
                *slice = IoSlice::new(buffer);
            }
            let written = match self.0.stream.try_write_vectored(&slices[..count]) {
                Ok(written) => written,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            };
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            out.consume(written);
        }
        Ok(true)
    }
}

impl Out {
    fn push(&mut self, buffer: Bytes) {
        self.bytes += buffer.len();
        self.queue.push_back(buffer);
    }

    fn consume(&mut self, mut written: usize) {
        self.bytes -= written;
        while written > 0 {
            let front = self.queue.front_mut().expect("the kernel took no more than was queued");
            if written >= front.len() {
                written -= front.len();
                self.queue.pop_front();
                self.started = false;
            } else {
                front.advance(written);
                self.started = true;
                written = 0;
            }
        }
    }
}

impl AsyncRead for SocketIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for SocketIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

impl AsyncWrite for Socket {
    /// Accepts the whole buffer or none of it, so a caller's frame is never split
    /// by a frame queued from outside.
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut out = self.out();
            let drained = self.write_out(&mut out)?;
            if drained {
                match self.0.stream.try_write(buf) {
                    Ok(written) if written == buf.len() => return Poll::Ready(Ok(written)),
                    Ok(written) => {
                        out.push(Bytes::copy_from_slice(&buf[written..]));
                        out.started = written > 0;
                        return Poll::Ready(Ok(buf.len()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            if out.bytes + buf.len() <= WRITE_BACKPRESSURE_BYTES {
                out.push(Bytes::copy_from_slice(buf));
                return Poll::Ready(Ok(buf.len()));
            }
            drop(out);
            ready!(self.0.stream.as_ref().poll_write_ready(cx))?;
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut out = self.out();
            if self.write_out(&mut out)? {
                return Poll::Ready(Ok(()));
            }
            drop(out);
            ready!(self.0.stream.as_ref().poll_write_ready(cx))?;
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Poll::Ready(socket2::SockRef::from(self.0.stream.as_ref()).shutdown(std::net::Shutdown::Write))
    }
}

/// The HTTP port's listener: accepted connections become [`SocketIo`]s, with
/// `TCP_NODELAY` (small frames go out at once).
#[derive(Debug)]
pub struct SocketListener(pub TcpListener);

impl Listener for SocketListener {
    type Io = SocketIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = Listener::accept(&mut self.0).await;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        (SocketIo::new(stream), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// The connect info of every request on the HTTP port (`ConnectInfo<Peer>`).
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// Its connection.
    pub socket: Socket,
}

impl Connected<IncomingStream<'_, SocketListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, SocketListener>) -> Self {
        Self {
            addr: *stream.remote_addr(),
            socket: stream.io().socket().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn pair() -> (Socket, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (SocketIo::new(server).socket().clone(), client)
    }

    #[tokio::test]
    async fn queued_frames_and_writes_keep_their_order() {
        let (mut socket, mut client) = pair().await;
        let queued = socket.queue(Bytes::from_static(b"one "));
        assert_eq!(
            queued,
            Queued {
                bytes: 4,
                needs_flush: true
            }
        );
        assert!(
            !socket.queue(Bytes::from_static(b"two ")).needs_flush,
            "a flush is already due"
        );
        socket.write_all(b"three ").await.unwrap();
        socket.flush().await.unwrap();
        assert_eq!(socket.queued_bytes(), 0);
        assert!(
            !socket.queue(Bytes::from_static(b"")).needs_flush,
            "the writer drained the queue, but the flush owed for `one` is still owed"
        );
        assert!(socket.try_flush().unwrap());
        assert!(socket.queue(Bytes::from_static(b"four")).needs_flush);
        assert!(socket.try_flush().unwrap());
        let mut read = vec![0; 18];
        client.read_exact(&mut read).await.unwrap();
        assert_eq!(read, b"one two three four");
    }

    #[tokio::test]
    async fn a_full_socket_keeps_the_rest_and_drops_only_unstarted_frames() {
        let (socket, mut client) = pair().await;
        let frame = Bytes::from(vec![7u8; 1 << 20]);
        let mut frames = 0;
        loop {
            frames += 1;
            socket.queue(frame.clone());
            if !socket.try_flush().unwrap() {
                break;
            }
            assert!(frames < 1000, "the kernel took a gigabyte");
        }
        socket.queue(Bytes::from_static(b"x"));
        socket.discard_unstarted();
        let left = socket.queued_bytes();
        assert!(left < frame.len(), "at most the started frame's rest is kept: {left}");
        socket.queue(Bytes::from_static(b"end"));
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        });
        socket.flush_queued().await.unwrap();
        let mut socket = socket;
        socket.shutdown().await.unwrap();
        let all = reader.await.unwrap();
        assert_eq!(all.len() % frame.len(), 3, "whole frames, then the last one");
        assert!(all.len() >= (frames - 1) * frame.len(), "no written frame is lost");
        assert!(all.ends_with(&[7, 7, b'e', b'n', b'd']));
    }
}
