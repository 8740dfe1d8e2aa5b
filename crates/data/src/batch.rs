//! `Batch`: what the trainer turns into tensors.

use crate::dataset::Dataset;

/// The label of a position that carries no loss (PyTorch's and Hugging Face's `-100`).
pub const IGNORE_INDEX: i64 = -100;

/// A right-padded batch, every array row-major `[batch_size, seq_len]`.
///
/// A row holds one sample, or several when packing. The model consumes it so:
///
/// * **embeddings** from `input_ids` (padding holds the tokenizer's pad id);
/// * **attention**: query `q` may attend to key `k` of the same row iff
///   `segment_ids[q] != 0 && segment_ids[k] == segment_ids[q] && k <= q` — causal, and never
///   across packed samples or into padding ([`Batch::may_attend`]). For unpacked batches this
///   is the usual causal mask plus padding mask ([`Batch::attention_mask`]). Padding queries
///   have no allowed key: fill their mask so the softmax stays finite (e.g. allow `k == q`);
///   their outputs carry no loss;
/// * **positions** (RoPE) from `position_ids`, which restart at 0 for each packed sample;
/// * **loss**: `labels` are the *unshifted* input ids at trained positions and
///   [`IGNORE_INDEX`] elsewhere. Shift by one as Hugging Face does (logits at `t` predict
///   `labels[t + 1]`), take cross-entropy over non-ignored labels, and normalise by
///   `num_trained_tokens` (summed over a gradient-accumulation window). The first token of
///   every sample is always ignored, so the shift never predicts across a packed boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Rows in the batch.
    pub batch_size: usize,
    /// Tokens per row: the longest row of this batch.
    pub seq_len: usize,
    /// Token ids; the pad id after each row's last sample.
    pub input_ids: Vec<u32>,
    /// The input id where the token carries loss, [`IGNORE_INDEX`] elsewhere.
    pub labels: Vec<i64>,
    /// 0 for padding, `1..=n` for the n-th sample of the row.
    pub segment_ids: Vec<u32>,
    /// Position of each token within its sample (0 for padding).
    pub position_ids: Vec<u32>,
    /// Labels that are not [`IGNORE_INDEX`]: the number of loss terms.
    pub num_trained_tokens: usize,
}

impl Batch {
    /// Lays out `rows` (each a list of sample indices of `dataset`), right-padded with `pad_id`.
    pub(crate) fn collate(dataset: &Dataset, rows: &[&[usize]], pad_id: u32) -> Self {
        let row_len = |row: &[usize]| row.iter().map(|&s| dataset.sample_len(s)).sum::<usize>();
        let seq_len = rows.iter().map(|r| row_len(r)).max().unwrap_or(0);
        let size = rows.len() * seq_len;
        let mut batch = Batch {
            batch_size: rows.len(),
            seq_len,
            input_ids: Vec::with_capacity(size),
            labels: Vec::with_capacity(size),
            segment_ids: Vec::with_capacity(size),
            position_ids: Vec::with_capacity(size),
            num_trained_tokens: 0,
        };
        for row in rows {
            for (segment, sample) in (1u32..).zip(row.iter().filter_map(|&s| dataset.get(s))) {
                for (position, (&id, &trained)) in (0u32..).zip(sample.input_ids.iter().zip(sample.trained)) {
                    let label = trained && position > 0;
                    batch.input_ids.push(id);
                    batch.labels.push(if label { i64::from(id) } else { IGNORE_INDEX });
                    batch.segment_ids.push(segment);
                    batch.position_ids.push(position);
                    batch.num_trained_tokens += usize::from(label);
                }
            }
            let padding = seq_len - row_len(row);
            batch.input_ids.extend(std::iter::repeat_n(pad_id, padding));
            batch.labels.extend(std::iter::repeat_n(IGNORE_INDEX, padding));
            batch.segment_ids.extend(std::iter::repeat_n(0, padding));
            batch.position_ids.extend(std::iter::repeat_n(0, padding));
        }
        batch
    }

    /// 1 where a token is real, 0 where it is padding: `[batch_size, seq_len]`. Enough for
    /// unpacked batches (with a causal mask); packed ones need [`Batch::may_attend`].
    pub fn attention_mask(&self) -> Vec<u8> {
        self.segment_ids.iter().map(|&s| u8::from(s != 0)).collect()
    }

    /// Whether any row holds more than one sample (then attention must follow segments).
    pub fn is_packed(&self) -> bool {
        self.segment_ids.iter().any(|&s| s > 1)
    }

    /// Whether, in `row`, the token at `query` may attend to the token at `key`.
    pub fn may_attend(&self, row: usize, query: usize, key: usize) -> bool {
        let segment = |i: usize| {
            (i < self.seq_len)
                .then(|| self.segment_ids.get(row * self.seq_len + i))
                .flatten()
                .copied()
                .unwrap_or(0)
        };
        let q = segment(query);
        q != 0 && key <= query && segment(key) == q
    }
}
