//! The gzip encoding of a compressed stream (`AURA_STREAM_COMPRESSION=gzip`), built so that an
//! idle compressed stream holds a few hundred bytes, not a compressor.
//!
//! A zlib compressor keeps its window, hash chains and pending buffer (over 100 KiB at flate2's
//! fixed memory level) for as long as it lives; kept per stream, 10,000 idle streams would hold
//! more than a gigabyte. Instead, each write (one event or one batch) is compressed by a fresh
//! raw-deflate compressor that ends with a sync flush, so its output is a byte-aligned run of
//! non-final blocks that continues the one deflate stream the client is decoding. The
//! compressor is primed with the last [`TAIL`] bytes this stream sent as its dictionary: the
//! client's decoder holds those bytes in its window already, so back-references into them are
//! valid, and consecutive events (which mostly repeat each other) compress as well as with a
//! long-lived compressor. Between writes a stream keeps only that tail and the running CRC-32
//! and length for the gzip trailer.
//!
//! Since every write starts from a reset compressor anyway, the compressors themselves are
//! shared: one per runtime thread, reset before each use. A write is synchronous (nothing
//! awaits while it holds the compressor), so no two streams can use one at once, and a burst of
//! compressed writes allocates nothing.

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, Crc, FlushCompress};

/// The uncompressed bytes kept between writes as the next write's dictionary.
pub const TAIL: usize = 1024;
/// The deflate window of each write's compressor: the tail fits in it.
const WINDOW_BITS: u8 = 10;
/// zlib's default level: the writes are small, so the cost of a higher level is negligible.
const LEVEL: u32 = 6;
/// A gzip member header: deflate, no name, no time, unknown OS.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// One stream's gzip state between writes.
#[derive(Default)]
pub struct Gzip {
    started: bool,
    crc: Crc,
    tail: Vec<u8>,
}

impl Gzip {
    /// The compressed bytes of `data`, flushed: the client can decode all of `data` from them.
    pub fn encode(&mut self, data: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        self.header(&mut out);
        with_deflate(|deflate| {
            if !self.tail.is_empty() && deflate.set_dictionary(&self.tail).is_err() {
                // Without the dictionary the output is still valid, only larger.
                deflate.reset();
            }
            run(deflate, data, &mut out, FlushCompress::Sync);
        });
        self.crc.update(data);
        self.remember(data);
        Bytes::from(out)
    }

    /// The end of the gzip stream: an empty final block, the CRC-32 and the length.
    pub fn finish(&mut self) -> Bytes {
        let mut out = Vec::with_capacity(32);
        self.header(&mut out);
        with_deflate(|deflate| run(deflate, &[], &mut out, FlushCompress::Finish));
        out.extend_from_slice(&self.crc.sum().to_le_bytes());
        out.extend_from_slice(&self.crc.amount().to_le_bytes());
        Bytes::from(out)
    }

    fn header(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            out.extend_from_slice(&HEADER);
        }
    }

    /// Keeps the last [`TAIL`] bytes sent.
    fn remember(&mut self, data: &[u8]) {
        if data.len() >= TAIL {
            self.tail.clear();
            self.tail.extend_from_slice(&data[data.len() - TAIL..]);
        } else {
            let drop = (self.tail.len() + data.len()).saturating_sub(TAIL);
            self.tail.drain(..drop);
            self.tail.extend_from_slice(data);
        }
    }
}

thread_local! {
    /// This thread's compressor, reset before every use.
    static DEFLATE: RefCell<Option<Compress>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's compressor, fresh as a new one.
fn with_deflate<R>(f: impl FnOnce(&mut Compress) -> R) -> R {
    DEFLATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let deflate = slot.get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::new(LEVEL), false, WINDOW_BITS)
        });
        deflate.reset();
        f(deflate)
    })
}

/// Compresses all of `input` into `out` with `flush`, growing `out` until the flush is complete.
fn run(deflate: &mut Compress, input: &[u8], out: &mut Vec<u8>, flush: FlushCompress) {
    loop {
        out.reserve(256.max(input.len() / 4));
        let consumed = usize::try_from(deflate.total_in()).unwrap_or(usize::MAX);
        let rest = input.get(consumed..).unwrap_or_default();
        let status = deflate.compress_vec(rest, out, flush);
        let done = usize::try_from(deflate.total_in()).is_ok_and(|n| n >= input.len());
        match status {
            Ok(flate2::Status::StreamEnd) => return,
            // A flush is complete when the compressor left room in the output.
            Ok(_) if done && out.len() < out.capacity() && flush != FlushCompress::Finish => return,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "compressing a stream write failed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn writes_decode_to_the_same_bytes_one_by_one_and_as_a_whole() {
        let mut gzip = Gzip::default();
        let frames: Vec<String> = (1..200)
            .map(|i| format!("id: {i}\nevent: step-progress\ndata: {{\"progressPct\":{}}}\n\n", i % 100))
            .collect();
        let mut wire = Vec::new();
        let mut decoder = flate2::Decompress::new(false);
        let mut seen = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            let bytes = gzip.encode(frame.as_bytes());
            // Each write alone decodes to its frame: nothing waits in the compressor.
            let body = if i == 0 { &bytes[10..] } else { &bytes[..] };
            let before = seen.len();
            seen.reserve(4096);
            decoder.decompress_vec(body, &mut seen, flate2::FlushDecompress::Sync).expect("inflate");
            assert_eq!(&seen[before..], frame.as_bytes());
            wire.extend_from_slice(&bytes);
        }
        wire.extend_from_slice(&gzip.finish());
        let mut whole = String::new();
        flate2::read::GzDecoder::new(&wire[..]).read_to_string(&mut whole).expect("gunzip");
        assert_eq!(whole, frames.concat());
        assert!(wire.len() * 3 < whole.len(), "{} of {}", wire.len(), whole.len());
        assert!(gzip.tail.len() <= TAIL);
    }
}
