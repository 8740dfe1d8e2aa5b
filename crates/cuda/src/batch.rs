//! A micro-batch's token layout on the device: token ids, positions, segments (0 = padding),
//! next-token targets, the RoPE frequencies of both layer types, and per-32-token segment
//! statistics that let the fused attention skip tiles its masks leave empty. One buffer, one
//! upload: a decoder rewrites it every token.

use ember_model::{GemmaConfig, Rope};
use ember_trainer::grads::MicroBatch;

use crate::driver::{Buffer, Gpu};
use crate::error::Result;

pub struct BatchData {
    pub batch: usize,
    pub seq: usize,
    /// Device pointers into `buffer`: token ids, positions, segments, targets (i32 per token),
    /// tile statistics, and the RoPE frequencies (f32).
    pub ids: u64,
    pub positions: u64,
    pub segments: u64,
    pub targets: u64,
    /// `{lo, hi, uniform}` per batch row and 32-token tile (see `Span` in attention_flash.cu).
    pub stats: u64,
    pub inv_freq_full: u64,
    pub inv_freq_sliding: u64,
    /// Tokens `buffer` has room for.
    capacity: usize,
    buffer: Buffer,
}

impl BatchData {
    /// `mb` on the device.
    pub fn upload(gpu: &Gpu, config: &GemmaConfig, mb: &MicroBatch) -> Result<Self> {
        let mut data = Self::with_capacity(config, mb.batch * mb.seq)?;
        data.write(gpu, config, mb)?;
        Ok(data)
    }

    /// Room for micro-batches of up to `tokens` tokens, written by [`Self::write`]: a decoder's
    /// steps reuse one.
    pub fn with_capacity(config: &GemmaConfig, tokens: usize) -> Result<Self> {
        let tokens = tokens.max(1);
        let half = config.head_dim / 2;
        // Every row may start a tile: at most `tokens / 32 + rows` tiles of three ints.
        let words = 4 * tokens + 3 * (tokens.div_ceil(32) + tokens) + 2 * half;
        let buffer = Buffer::new(words * 4)?;
        let mut data = Self {
            batch: 0,
            seq: 0,
            ids: 0,
            positions: 0,
            segments: 0,
            targets: 0,
            stats: 0,
            inv_freq_full: 0,
            inv_freq_sliding: 0,
            capacity: tokens,
            buffer,
        };
        let at = |words: usize| data.buffer.ptr + 4 * words as u64;
        (data.ids, data.positions, data.segments, data.targets) = (at(0), at(tokens), at(2 * tokens), at(3 * tokens));
        (data.inv_freq_full, data.inv_freq_sliding) = (at(4 * tokens), at(4 * tokens + half));
        data.stats = at(4 * tokens + 2 * half);
        Ok(data)
    }

    /// Writes `mb` (at most the capacity's tokens) in one upload.
    pub fn write(&mut self, gpu: &Gpu, config: &GemmaConfig, mb: &MicroBatch) -> Result<()> {
        let tokens = mb.batch * mb.seq;
        assert!(tokens <= self.capacity, "{tokens} tokens in room for {}", self.capacity);
        let n = self.capacity;
        let half = config.head_dim / 2;
        let mut words = vec![0u32; 4 * n + 2 * half];
        let ints = [&mb.input_ids, &mb.positions, &mb.segments, &mb.targets];
        for (part, values) in ints.iter().enumerate() {
            for (word, &v) in words[part * n..].iter_mut().zip(values.iter()) {
                *word = v as i32 as u32;
            }
        }
        let freqs = [
            inv_freq(config.rope_full, config.head_dim),
            inv_freq(config.rope_sliding, config.head_dim),
        ];
        for (part, values) in freqs.iter().enumerate() {
            for (word, &v) in words[4 * n + part * half..].iter_mut().zip(values) {
                *word = v.to_bits();
            }
        }
        words.extend(tile_stats(&mb.segments, mb.batch, mb.seq).iter().map(|&v| v as u32));
        gpu.upload(self.buffer.ptr, &words)?;
        self.batch = mb.batch;
        self.seq = mb.seq;
        Ok(())
    }

    pub fn tokens(&self) -> usize {
        self.batch * self.seq
    }

    /// The whole micro-batch, as one pass of a layer's kernels.
    pub fn all(&self) -> BatchRows {
        BatchRows {
            batch: self.batch,
            seq: self.seq,
            offset: 0,
            positions: self.positions,
            segments: self.segments,
            stats: self.stats,
            first: true,
            last: true,
        }
    }
}

/// Rows `offset / seq ..` of a micro-batch on the device: the token layout one pass of a
/// layer's kernels reads.
#[derive(Debug, Clone, Copy)]
pub struct BatchRows {
    pub batch: usize,
    pub seq: usize,
    /// The pass's first token among the micro-batch's.
    pub offset: usize,
    pub positions: u64,
    pub segments: u64,
    pub stats: u64,
    /// Whether the pass holds the micro-batch's first or last row: where the adapters'
    /// gradients start, and where they are complete.
    pub first: bool,
    pub last: bool,
}

impl BatchRows {
    pub fn tokens(&self) -> usize {
        self.batch * self.seq
    }

    /// These rows in passes of whole rows, each of at most `tokens` tokens (or one row, when
    /// a row is longer): a layer's rows are independent of each other's, so a layer may run
    /// its kernels a pass at a time in buffers sized for one pass.
    pub fn passes(&self, tokens: usize) -> impl Iterator<Item = BatchRows> + '_ {
        passes(self.batch, self.seq, tokens).map(|(start, count)| self.rows(start, count))
    }

    /// Rows `start..start + count` of these.
    fn rows(&self, start: usize, count: usize) -> BatchRows {
        let tokens = start * self.seq;
        let stats_row = self.seq.div_ceil(32) * 3 * 4;
        BatchRows {
            batch: count,
            seq: self.seq,
            offset: self.offset + tokens,
            positions: self.positions + 4 * tokens as u64,
            segments: self.segments + 4 * tokens as u64,
            stats: self.stats + (start * stats_row) as u64,
            first: self.first && start == 0,
            last: self.last && start + count == self.batch,
        }
    }
}

/// The first row and the number of rows of each pass over `batch` rows of `seq` tokens, at
/// most `tokens` tokens a pass (one row at least).
fn passes(batch: usize, seq: usize, tokens: usize) -> impl Iterator<Item = (usize, usize)> {
    let rows = (tokens / seq.max(1)).max(1);
    (0..batch)
        .step_by(rows)
        .map(move |start| (start, rows.min(batch - start)))
}

/// `1 / theta^(2i/d) / factor` in f32, as `ember_model::RopeTables` computes it.
fn inv_freq(rope: Rope, head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| 1.0 / (rope.theta as f32).powf((2 * i) as f32 / head_dim as f32) / rope.factor as f32)
        .collect()
}

/// Per row and 32-token tile: the lowest and highest non-padding segment (`i32::MAX`, 0 when
/// none) and whether all 32 tokens exist, are not padding and share one segment.
pub fn tile_stats(segments: &[i64], batch: usize, seq: usize) -> Vec<i32> {
    let tiles = seq.div_ceil(32);
    let mut out = Vec::with_capacity(batch * tiles * 3);
    for row in segments.chunks(seq).take(batch) {
        for tile in row.chunks(32) {
            let real: Vec<i32> = tile.iter().filter(|&&s| s != 0).map(|&s| s as i32).collect();
            let lo = real.iter().copied().min().unwrap_or(i32::MAX);
            let hi = real.iter().copied().max().unwrap_or(0);
            let uniform = tile.len() == 32 && real.len() == 32 && lo == hi;
            out.extend([lo, hi, uniform as i32]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{passes, tile_stats};

    #[test]
    fn passes_take_whole_rows() {
        let all = |batch, seq, tokens| passes(batch, seq, tokens).collect::<Vec<_>>();
        assert_eq!(all(8, 1024, 2048), [(0, 2), (2, 2), (4, 2), (6, 2)]);
        assert_eq!(all(5, 1024, 2048), [(0, 2), (2, 2), (4, 1)]);
        assert_eq!(all(3, 1024, 3000), [(0, 2), (2, 1)]);
        // A row longer than a pass is a pass of its own.
        assert_eq!(all(2, 4096, 2048), [(0, 1), (1, 1)]);
        assert_eq!(all(8, 1024, 8192), [(0, 8)]);
        assert_eq!(all(8, 1024, 1 << 20), [(0, 8)]);
    }

    #[test]
    fn tile_stats_describe_packing_and_padding() {
        // One row of 70 tokens: samples 1 (40 tokens) and 2 (20), then 10 of padding.
        let segments: Vec<i64> = [vec![1; 40], vec![2; 20], vec![0; 10]].concat();
        let stats = tile_stats(&segments, 1, 70);
        assert_eq!(stats, [1, 1, 1, 1, 2, 0, i32::MAX, 0, 0]);
        let padding_only = tile_stats(&[0; 32], 1, 32);
        assert_eq!(padding_only, [i32::MAX, 0, 0]);
    }
}
