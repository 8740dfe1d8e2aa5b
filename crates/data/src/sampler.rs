//! The order of batches: rows (one sample, or a packed group), shuffled per epoch from the
//! seed, optionally grouped by length, and a position that resumes exactly.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::batch::Batch;
use crate::config::DataConfig;
use crate::dataset::{Dataset, Fnv};
use crate::error::DataError;
use crate::pack::best_fit_decreasing;
use crate::shuffle::{derive, permutation};

/// How the loader forms batches; see the same-named [`DataConfig`] fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderOptions {
    /// Rows per batch (the trainer's per-device batch size).
    pub batch_size: usize,
    pub shuffle: bool,
    pub group_by_length: bool,
    pub packing: bool,
    /// Row capacity when packing.
    pub max_seq_length: usize,
    pub seed: u64,
    /// Written at padded positions.
    pub pad_id: u32,
}

impl LoaderOptions {
    /// The options of `config`, with the trainer's batch size and the tokenizer's pad id.
    pub fn new(config: &DataConfig, batch_size: usize, pad_id: u32) -> Self {
        Self {
            batch_size,
            shuffle: config.shuffle,
            group_by_length: config.group_by_length,
            packing: config.packing,
            max_seq_length: config.max_seq_length,
            seed: config.seed,
            pad_id,
        }
    }
}

/// Where the loader is: save it with a checkpoint, give it to [`Loader::resume`], and the
/// resumed run sees exactly the batches the uninterrupted run would have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderPosition {
    /// The shuffle seed.
    pub seed: u64,
    /// 0-based epoch of the next batch.
    pub epoch: u64,
    /// Batches of this epoch already produced.
    pub batch: u64,
    /// Hash of the tokenized data and of the batching options: resuming over different data
    /// or options is an error, not a silent change of order.
    pub fingerprint: u64,
}

/// An endless stream of training batches, epoch after epoch.
///
/// Each epoch visits every row once: a row is one sample, or with packing a group of samples
/// packed once (best-fit decreasing) when the loader is made. The last batch of an epoch may
/// be smaller than `batch_size` (Hugging Face's default, `drop_last = False`).
pub struct Loader {
    dataset: Arc<Dataset>,
    options: LoaderOptions,
    /// Sample indices of every row, flat; `row_starts[r]..row_starts[r + 1]` is row `r`.
    row_samples: Vec<usize>,
    row_starts: Vec<usize>,
    /// Row indices in this epoch's order.
    order: Vec<usize>,
    position: LoaderPosition,
}

impl Loader {
    /// A loader at the start of epoch 0. It shares `dataset` (pass a `Dataset`, or an
    /// `Arc<Dataset>` to keep using it elsewhere).
    pub fn new(dataset: impl Into<Arc<Dataset>>, options: LoaderOptions) -> Result<Self, DataError> {
        let dataset = dataset.into();
        if options.batch_size == 0 {
            return Err(DataError::Config {
                key: "batch_size",
                message: "must be at least 1".to_owned(),
            });
        }
        if dataset.is_empty() {
            return Err(DataError::EmptyDataset {
                path: "(the dataset given to the loader)".to_owned(),
            });
        }
        let (row_samples, row_starts) = rows(&dataset, &options);
        let mut loader = Self {
            dataset,
            options,
            row_samples,
            row_starts,
            order: Vec::new(),
            position: LoaderPosition {
                seed: options.seed,
                epoch: 0,
                batch: 0,
                fingerprint: 0,
            },
        };
        loader.position.fingerprint = loader.fingerprint();
        loader.order = loader.epoch_order(0);
        Ok(loader)
    }

    /// A loader at `position`, which must come from a loader over the same data and options.
    pub fn resume(
        dataset: impl Into<Arc<Dataset>>,
        options: LoaderOptions,
        position: LoaderPosition,
    ) -> Result<Self, DataError> {
        let mut loader = Self::new(dataset, options)?;
        let current = loader.position;
        if position.seed != current.seed {
            return Err(DataError::ResumeMismatch {
                what: "seed",
                saved: position.seed,
                current: current.seed,
            });
        }
        if position.fingerprint != current.fingerprint {
            return Err(DataError::ResumeMismatch {
                what: "data fingerprint",
                saved: position.fingerprint,
                current: current.fingerprint,
            });
        }
        let batches = loader.batches_per_epoch() as u64;
        if position.batch > batches {
            return Err(DataError::ResumeMismatch {
                what: "batch index (batches per epoch)",
                saved: position.batch,
                current: batches,
            });
        }
        loader.order = loader.epoch_order(position.epoch);
        loader.position = position;
        Ok(loader)
    }

    /// The dataset the batches come from.
    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    /// Where the next batch comes from.
    pub fn position(&self) -> LoaderPosition {
        self.position
    }

    /// Batches in every epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.num_rows().div_ceil(self.options.batch_size)
    }

    /// Rows per epoch (samples, or packed rows).
    pub fn num_rows(&self) -> usize {
        self.row_starts.len() - 1
    }

    /// The next batch; after the last batch of an epoch comes the first of the next.
    pub fn next_batch(&mut self) -> Batch {
        if self.position.batch as usize >= self.batches_per_epoch() {
            self.position.epoch += 1;
            self.position.batch = 0;
            self.order = self.epoch_order(self.position.epoch);
        }
        let start = self.position.batch as usize * self.options.batch_size;
        let end = (start + self.options.batch_size).min(self.order.len());
        let rows: Vec<&[usize]> = self.order[start..end]
            .iter()
            .map(|&r| &self.row_samples[self.row_starts[r]..self.row_starts[r + 1]])
            .collect();
        self.position.batch += 1;
        Batch::collate(&self.dataset, &rows, self.options.pad_id)
    }

    fn row_len(&self, row: usize) -> usize {
        self.row_samples[self.row_starts[row]..self.row_starts[row + 1]]
            .iter()
            .map(|&s| self.dataset.sample_len(s))
            .sum()
    }

    /// The row order of `epoch`: a permutation from (seed, epoch), or the dataset order.
    fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let n = self.num_rows();
        let order = if self.options.shuffle {
            permutation(n, derive(self.options.seed, epoch))
        } else {
            (0..n).collect()
        };
        if self.options.group_by_length {
            self.group_by_length(order)
        } else {
            order
        }
    }

    /// Hugging Face's `LengthGroupedSampler`: mega-batches of up to 50 batches, each sorted
    /// longest first, and the longest row of all moved to the very first batch (an
    /// out-of-memory error shows at once, not hours in).
    fn group_by_length(&self, mut order: Vec<usize>) -> Vec<usize> {
        let batch = self.options.batch_size;
        let mult = (order.len() / (batch * 4)).clamp(1, 50);
        let mega = mult * batch;
        for chunk in order.chunks_mut(mega) {
            chunk.sort_by_key(|&r| std::cmp::Reverse(self.row_len(r)));
        }
        let longest = order
            .chunks(mega)
            .enumerate()
            .max_by_key(|(i, chunk)| (self.row_len(chunk[0]), std::cmp::Reverse(*i)))
            .map_or(0, |(i, _)| i * mega);
        order.swap(0, longest);
        order
    }

    fn fingerprint(&self) -> u64 {
        let mut hash = Fnv::new();
        hash.write(&self.dataset.fingerprint().to_le_bytes());
        let o = &self.options;
        for value in [
            o.batch_size as u64,
            u64::from(o.shuffle),
            u64::from(o.group_by_length),
            u64::from(o.packing),
            o.max_seq_length as u64,
            u64::from(o.pad_id),
        ] {
            hash.write(&value.to_le_bytes());
        }
        hash.finish()
    }
}

impl Iterator for Loader {
    type Item = Batch;

    /// Never `None`: the loader runs epoch after epoch; the trainer decides when to stop.
    fn next(&mut self) -> Option<Batch> {
        Some(self.next_batch())
    }
}

/// The rows of an epoch, flat: packed groups, or one sample each.
fn rows(dataset: &Dataset, options: &LoaderOptions) -> (Vec<usize>, Vec<usize>) {
    let n = dataset.len();
    if !options.packing {
        return ((0..n).collect(), (0..=n).collect());
    }
    let lengths: Vec<usize> = dataset.lengths().collect();
    let groups = best_fit_decreasing(&lengths, options.max_seq_length);
    let mut samples = Vec::with_capacity(n);
    let mut starts = Vec::with_capacity(groups.len() + 1);
    starts.push(0);
    for group in groups {
        samples.extend(group);
        starts.push(samples.len());
    }
    (samples, starts)
}

/// Evaluation batches: every sample once, in order, unpacked and unshuffled.
pub fn eval_batches(dataset: &Dataset, batch_size: usize, pad_id: u32) -> impl Iterator<Item = Batch> + '_ {
    let indices: Vec<usize> = (0..dataset.len()).collect();
    let batch_size = batch_size.max(1);
    (0..dataset.len().div_ceil(batch_size)).map(move |b| {
        let end = ((b + 1) * batch_size).min(indices.len());
        let rows: Vec<&[usize]> = indices[b * batch_size..end].iter().map(std::slice::from_ref).collect();
        Batch::collate(dataset, &rows, pad_id)
    })
}
