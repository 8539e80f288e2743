//! Where an open stream's bytes go, and the one operation the fan-out needs from it: take these
//! frames now, without waiting, or say how much was taken.
//!
//! A stream requested as the first request of a connection owns that connection's socket
//! (`server` hands it over): frames go straight into the kernel with one vectored `write`, wrapped
//! in HTTP/1.1 chunked framing. A stream requested on a connection hyper already serves (a
//! keep-alive connection reused by a browser) writes into a small channel that hyper's response
//! body reads. Either way the fan-out never waits on a slow client: a sink that cannot take a
//! write whole hands its stream back to the stream's own task, which finishes the write and
//! catches up from the table.
//!
//! Every write that waits has a deadline: a client that takes no byte for the write timeout
//! (`AURA_WRITE_TIMEOUT_SECS`) gets an error, and its stream ends (it resumes from its
//! `Last-Event-ID` when it reads again). A write the kernel took whole waits for nothing; if
//! the client then takes none of it, the kernel drops the connection after the same timeout
//! (`TCP_USER_TIMEOUT`, set by `server`), and [`Sink::closed`] and every later write see it.

use std::cell::OnceCell;
use std::io::{self, IoSlice};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// What became of a non-blocking write.
#[derive(Debug)]
pub enum Push {
    /// Everything was taken.
    Done,
    /// Not all was taken: these wire bytes (already framed), the rest, must go out before
    /// anything else.
    Partial(Bytes),
    /// Nothing was taken: the client is not reading fast enough.
    Full,
    /// The client is gone.
    Closed,
}

pub struct Sink {
    target: Target,
    /// The longest a write may wait with no byte taken by the client.
    write_timeout: Duration,
}

enum Target {
    /// The client's socket; the response head has been written, the body is chunked.
    Socket(TcpStream),
    /// hyper's response body, one chunk per message.
    Channel(mpsc::Sender<Bytes>),
}

/// Most frames written with one vectored write before they are copied into one buffer.
const MAX_SLICES: usize = 14;

impl Sink {
    /// A stream's own socket, whose response head the caller writes with [`Sink::push_wire`].
    pub fn socket(socket: TcpStream, write_timeout: Duration) -> Self {
        Sink { target: Target::Socket(socket), write_timeout }
    }

    /// The sending end of a hyper response body's channel.
    pub fn channel(tx: mpsc::Sender<Bytes>, write_timeout: Duration) -> Self {
        Sink { target: Target::Channel(tx), write_timeout }
    }

    /// Writes `frames` as one chunk if the sink can take it without waiting. `whole` is given
    /// when `frames` are a whole group, whose wire bytes it makes once for every sink.
    pub fn try_push(&self, frames: &[&Bytes], whole: Option<&Whole>) -> Push {
        match &self.target {
            Target::Socket(socket) => match whole {
                Some(whole) => try_write_socket(socket, whole.chunked(frames)),
                None => try_push_socket(socket, frames),
            },
            Target::Channel(tx) => {
                match tx.try_send(whole.map_or_else(|| concat(frames), |w| w.plain(frames))) {
                    Ok(()) => Push::Done,
                    Err(mpsc::error::TrySendError::Full(bytes)) => Push::Partial(bytes),
                    Err(mpsc::error::TrySendError::Closed(_)) => Push::Closed,
                }
            }
        }
    }

    /// Writes `data` as one chunk, waiting for the client while it keeps taking bytes; an error
    /// once it has taken none for the write timeout.
    pub async fn push(&self, data: Bytes) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        match &self.target {
            Target::Socket(socket) => {
                // Header, data and CRLF in vectored writes: a replay page is not copied again.
                let (header, len) = chunk_header(data.len());
                write_all(socket, vec![&header[..len], &data, b"\r\n"], self.write_timeout).await
            }
            Target::Channel(_) => self.push_wire(data).await,
        }
    }

    /// Writes bytes that are already framed for this sink (what a [`Push::Partial`] left).
    pub async fn push_wire(&self, wire: Bytes) -> io::Result<()> {
        match &self.target {
            Target::Socket(socket) => write_all(socket, vec![&wire], self.write_timeout).await,
            Target::Channel(tx) => match tokio::time::timeout(self.write_timeout, tx.send(wire)).await {
                Ok(sent) => sent.map_err(|_| io::ErrorKind::BrokenPipe.into()),
                Err(_) => Err(io::ErrorKind::TimedOut.into()),
            },
        }
    }

    /// Waits until the sink can take bytes again after a write that took nothing; an error
    /// once the client has taken none for the write timeout.
    pub async fn writable(&self) -> io::Result<()> {
        let ready = async {
            match &self.target {
                Target::Socket(socket) => socket.writable().await,
                // A reserved slot is given back when the permit is dropped.
                Target::Channel(tx) => {
                    tx.reserve().await.map(drop).map_err(|_| io::ErrorKind::BrokenPipe.into())
                }
            }
        };
        tokio::time::timeout(self.write_timeout, ready).await.unwrap_or(Err(io::ErrorKind::TimedOut.into()))
    }

    /// Ends the response cleanly: the last chunk, so the client knows nothing was cut off.
    pub async fn finish(&self) {
        if let Target::Socket(_) = &self.target {
            let _ = self.push_wire(Bytes::from_static(b"0\r\n\r\n")).await;
        }
        // A channel ends when its sender is dropped.
    }

    /// Resolves once the client has gone away (closed its connection or dropped the body).
    pub async fn closed(&self) {
        match &self.target {
            Target::Socket(socket) => {
                let mut scratch = [0u8; 64];
                loop {
                    if socket.readable().await.is_err() {
                        return;
                    }
                    match socket.try_read(&mut scratch) {
                        Ok(0) => return,
                        Ok(_) => {} // Bytes a stream's client has no reason to send: dropped.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => return,
                    }
                }
            }
            Target::Channel(tx) => tx.closed().await,
        }
    }
}

/// Writes every byte of `parts`, in order, waiting for the socket as needed, but never longer
/// than `stall` without the client taking a byte.
async fn write_all(socket: &TcpStream, mut parts: Vec<&[u8]>, stall: Duration) -> io::Result<()> {
    parts.retain(|p| !p.is_empty());
    let mut first = 0;
    while first < parts.len() {
        match tokio::time::timeout(stall, socket.writable()).await {
            Ok(ready) => ready?,
            Err(_) => return Err(io::ErrorKind::TimedOut.into()),
        }
        let slices: Vec<IoSlice<'_>> = parts[first..].iter().map(|p| IoSlice::new(p)).collect();
        match socket.try_write_vectored(&slices) {
            Ok(mut n) => {
                while n > 0 && first < parts.len() {
                    let part = parts[first];
                    if n >= part.len() {
                        n -= part.len();
                        first += 1;
                    } else {
                        parts[first] = &part[n..];
                        n = 0;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A group's frames as the bytes of one write, made at most once per shard and shared by every
/// stream that takes the whole group (most streams, most groups): the kernel gets one buffer
/// instead of a chunk header, the frames and a CRLF in a vectored write.
#[derive(Default)]
pub struct Whole {
    /// One HTTP/1.1 chunk of every frame, for sinks that own their socket.
    chunked: OnceCell<Bytes>,
    /// The frames back to back, for hyper's body.
    plain: OnceCell<Bytes>,
}

impl Whole {
    fn chunked(&self, frames: &[&Bytes]) -> &Bytes {
        self.chunked.get_or_init(|| {
            let len: usize = frames.iter().map(|f| f.len()).sum();
            let (header, header_len) = chunk_header(len);
            let mut wire = BytesMut::with_capacity(header_len + len + 2);
            wire.extend_from_slice(&header[..header_len]);
            for frame in frames {
                wire.extend_from_slice(frame);
            }
            wire.extend_from_slice(b"\r\n");
            wire.freeze()
        })
    }

    fn plain(&self, frames: &[&Bytes]) -> Bytes {
        self.plain.get_or_init(|| concat(frames)).clone()
    }
}

/// One non-blocking `write` of bytes already framed for the socket.
fn try_write_socket(socket: &TcpStream, wire: &Bytes) -> Push {
    match socket.try_write(wire) {
        Ok(n) if n == wire.len() => Push::Done,
        Ok(n) => Push::Partial(wire.slice(n..)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Push::Full,
        Err(_) => Push::Closed,
    }
}

fn try_push_socket(socket: &TcpStream, frames: &[&Bytes]) -> Push {
    let len: usize = frames.iter().map(|f| f.len()).sum();
    if len == 0 {
        return Push::Done;
    }
    let (header, header_len) = chunk_header(len);
    let joined;
    let joined_ref;
    let body: &[&Bytes] = if frames.len() > MAX_SLICES {
        joined = concat(frames);
        joined_ref = &joined;
        std::slice::from_ref(&joined_ref)
    } else {
        frames
    };
    let mut slices = [IoSlice::new(&[]); MAX_SLICES + 2];
    slices[0] = IoSlice::new(&header[..header_len]);
    for (slot, frame) in slices[1..].iter_mut().zip(body) {
        *slot = IoSlice::new(frame);
    }
    slices[body.len() + 1] = IoSlice::new(b"\r\n");
    let slices = &slices[..body.len() + 2];
    let total = header_len + len + 2;
    match socket.try_write_vectored(slices) {
        Ok(n) if n == total => Push::Done,
        Ok(n) => Push::Partial(rest_after(slices, n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Push::Full,
        Err(_) => Push::Closed,
    }
}

/// The bytes of `slices` after the first `written`.
fn rest_after(slices: &[IoSlice<'_>], mut written: usize) -> Bytes {
    let mut rest = BytesMut::new();
    for slice in slices {
        if written >= slice.len() {
            written -= slice.len();
        } else {
            rest.extend_from_slice(&slice[written..]);
            written = 0;
        }
    }
    rest.freeze()
}

fn concat(frames: &[&Bytes]) -> Bytes {
    match frames {
        [one] => (*one).clone(),
        _ => {
            let mut all = BytesMut::with_capacity(frames.iter().map(|f| f.len()).sum());
            for frame in frames {
                all.extend_from_slice(frame);
            }
            all.freeze()
        }
    }
}

/// `<len in hex>\r\n`, the start of one HTTP/1.1 chunk.
fn chunk_header(len: usize) -> ([u8; 20], usize) {
    let mut digits = [0u8; 16];
    let (mut n, mut start) = (len, digits.len());
    loop {
        start -= 1;
        digits[start] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    let width = digits.len() - start;
    let mut out = [0u8; 20];
    out[..width].copy_from_slice(&digits[start..]);
    out[width..width + 2].copy_from_slice(b"\r\n");
    (out, width + 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_headers_are_hex_lengths() {
        let (h, n) = chunk_header(255);
        assert_eq!(&h[..n], b"ff\r\n");
        let (h, n) = chunk_header(1);
        assert_eq!(&h[..n], b"1\r\n");
        let (h, n) = chunk_header(0x10000);
        assert_eq!(&h[..n], b"10000\r\n");
    }

    #[test]
    fn the_rest_of_a_partial_write_starts_where_the_kernel_stopped() {
        let slices =
            [IoSlice::new(b"5\r\n"), IoSlice::new(b"ab"), IoSlice::new(b"cde"), IoSlice::new(b"\r\n")];
        assert_eq!(&rest_after(&slices, 4)[..], b"bcde\r\n");
        assert_eq!(&rest_after(&slices, 0)[..], b"5\r\nabcde\r\n");
        assert_eq!(&rest_after(&slices, 9)[..], b"\n");
    }
}
