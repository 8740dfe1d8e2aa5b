//! A micro-batch's token layout on the device: positions, segments (0 = padding), next-token
//! targets, the RoPE frequencies of both layer types, and per-32-token segment statistics that
//! let the fused attention skip tiles its masks leave empty.

use ember_model::{GemmaConfig, Rope};
use ember_trainer::grads::MicroBatch;

use crate::driver::{Buffer, Gpu};
use crate::error::Result;

pub struct BatchData {
    pub batch: usize,
    pub seq: usize,
    pub positions: Buffer,
    pub segments: Buffer,
    pub targets: Buffer,
    /// `{lo, hi, uniform}` per batch row and 32-token tile (see `Span` in attention_flash.cu).
    pub stats: Buffer,
    pub inv_freq_full: Buffer,
    pub inv_freq_sliding: Buffer,
}

impl BatchData {
    pub fn upload(gpu: &Gpu, config: &GemmaConfig, mb: &MicroBatch) -> Result<Self> {
        let ints = |values: &[i64]| -> Result<Buffer> {
            let v: Vec<i32> = values.iter().map(|&x| x as i32).collect();
            let buffer = Buffer::new(v.len() * 4)?;
            gpu.upload(buffer.ptr, &v)?;
            Ok(buffer)
        };
        let floats = |v: Vec<f32>| -> Result<Buffer> {
            let buffer = Buffer::new(v.len() * 4)?;
            gpu.upload(buffer.ptr, &v)?;
            Ok(buffer)
        };
        let stats = tile_stats(&mb.segments, mb.batch, mb.seq);
        let stats_buffer = Buffer::new(stats.len() * 4)?;
        gpu.upload(stats_buffer.ptr, &stats)?;
        Ok(Self {
            batch: mb.batch,
            seq: mb.seq,
            positions: ints(&mb.positions)?,
            segments: ints(&mb.segments)?,
            targets: ints(&mb.targets)?,
            stats: stats_buffer,
            inv_freq_full: floats(inv_freq(config.rope_full, config.head_dim))?,
            inv_freq_sliding: floats(inv_freq(config.rope_sliding, config.head_dim))?,
        })
    }

    pub fn tokens(&self) -> usize {
        self.batch * self.seq
    }
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
    use super::tile_stats;

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
