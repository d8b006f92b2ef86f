//! FastCDC 2020 cutting on one reused buffer, at exactly the cut points of `fastcdc`'s
//! `AsyncStreamCDC` (which backups before this cutter used: other cut points would make every
//! chunk of an existing repository new once).
//!
//! Why not `AsyncStreamCDC`: it hands each chunk out as a new vector collected from its
//! buffer, then moves the rest of its buffer to the front and zeroes the freed tail, so every
//! byte was copied about five times and every chunk was a fresh allocation (a fresh mmap at
//! the service's malloc threshold); a second backup of an unchanged path spent more time in
//! those copies and page faults than in cutting and hashing. Here a chunk is a slice of the
//! buffer: the caller names it in place and copies it only when it must be uploaded.
//!
//! `AsyncStreamCDC` fills its `max`-byte buffer (or reads to the end) and cuts within it;
//! `cut_gear` looks at no more than `max` bytes, so cutting whenever `max` bytes (or the
//! rest of the stream) are buffered gives the same points.

use bytes::Bytes;
use fastcdc::v2020::{FastCDC, Normalization};

/// Cuts a stream fed piece by piece into chunks.
pub struct Cutter {
    buf: Vec<u8>,
    /// The next chunk starts here.
    start: usize,
    /// Bytes buffered end here.
    end: usize,
    /// What did not fit in the buffer yet.
    pending: Option<Bytes>,
    min: u32,
    avg: u32,
    max: u32,
    seed: u64,
}

impl Cutter {
    /// A cutter of chunks between `min` and `max` bytes (FastCDC's limits; `min` ≥ 64,
    /// `avg` ≥ 256, `max` ≥ 1024), normalization level 1, gear table seeded with `seed`.
    pub fn new(min: u32, avg: u32, max: u32, seed: u64) -> Self {
        // Twice the largest chunk: the tail moved to the front when the buffer is full is
        // at most one chunk's worth, after at least as much was cut.
        let capacity = 2 * max as usize;
        Self { buf: vec![0; capacity], start: 0, end: 0, pending: None, min, avg, max, seed }
    }

    /// Whether a chunk can be cut without more input (unless the stream has ended).
    pub fn ready(&self) -> bool {
        self.end - self.start >= self.max as usize
    }

    /// Buffers as much of `piece` as fits; the rest is kept until chunks are cut. Call only
    /// while not [`Cutter::ready`] and with nothing pending.
    pub fn push(&mut self, piece: Bytes) {
        debug_assert!(self.pending.is_none());
        self.pending = Some(piece);
        self.fill();
    }

    /// Whether bytes of an earlier piece wait for room.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Moves pending bytes into the buffer, making room by moving the unconsumed tail to
    /// the front when the buffer's end is reached.
    pub fn fill(&mut self) {
        while !self.ready() {
            let Some(mut piece) = self.pending.take() else { return };
            if self.end == self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let n = piece.len().min(self.buf.len() - self.end);
            self.buf[self.end..self.end + n].copy_from_slice(&piece[..n]);
            self.end += n;
            if n < piece.len() {
                self.pending = Some(piece.split_off(n));
            }
        }
    }

    /// The next chunk, once [`Cutter::ready`], or at the end of the stream (`ended`) the
    /// remaining ones; `None` when more input is needed or nothing is left.
    pub fn next_chunk(&mut self, ended: bool) -> Option<&[u8]> {
        if !(self.ready() || ended && self.pending.is_none()) {
            return None;
        }
        let buffered = &self.buf[self.start..self.end];
        if buffered.is_empty() {
            return None;
        }
        let cdc = FastCDC::with_level_and_seed(
            buffered,
            self.min,
            self.avg,
            self.max,
            Normalization::Level1,
            self.seed,
        );
        let (_, cut) = cdc.cut(0, buffered.len());
        let chunk = self.start..self.start + cut;
        self.start += cut;
        Some(&self.buf[chunk])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastcdc::v2020::AsyncStreamCDC;
    use futures::StreamExt as _;

    /// Deterministic bytes with some runs of zeroes (forced cuts at the largest size).
    fn data(len: usize, mut state: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if state.is_multiple_of(97) {
                out.extend(std::iter::repeat_n(0, (state % 20_000) as usize));
            } else {
                out.extend_from_slice(&state.to_le_bytes());
            }
        }
        out.truncate(len);
        out
    }

    async fn reference(data: &[u8], seed: u64) -> Vec<usize> {
        let mut cdc = AsyncStreamCDC::with_level_and_seed(
            data,
            1024,
            4096,
            16384,
            Normalization::Level1,
            seed,
        );
        cdc.as_stream().map(|c| c.expect("reading from a slice").length).collect().await
    }

    fn cut(data: &[u8], seed: u64, piece: usize) -> Vec<usize> {
        let mut cutter = Cutter::new(1024, 4096, 16384, seed);
        let mut lengths = vec![];
        let mut pieces = data.chunks(piece);
        loop {
            while let Some(c) = cutter.next_chunk(false) {
                lengths.push(c.len());
            }
            cutter.fill();
            if cutter.has_pending() || cutter.ready() {
                continue;
            }
            match pieces.next() {
                Some(p) => cutter.push(Bytes::copy_from_slice(p)),
                None => break,
            }
        }
        while let Some(c) = cutter.next_chunk(true) {
            lengths.push(c.len());
        }
        lengths
    }

    #[tokio::test]
    async fn cuts_where_the_stream_chunker_cuts_whatever_the_pieces() {
        for (len, seed) in [(0, 0), (100, 1), (16_384, 7), (300_000, 0), (1_000_003, 42)] {
            let bytes = data(len, 0x9e37_79b9_7f4a_7c15 ^ len as u64);
            let expected = reference(&bytes, seed).await;
            assert_eq!(expected.iter().sum::<usize>(), len);
            for piece in [1, 333, 4096, 16_384, 65_536, 2_000_000] {
                assert_eq!(
                    cut(&bytes, seed, piece),
                    expected,
                    "len {len}, seed {seed}, pieces of {piece}"
                );
            }
        }
    }
}
