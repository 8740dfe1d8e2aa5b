//! A tokenized dataset: every sample's ids and loss mask in two flat arrays.

use std::path::PathBuf;

/// Tokenized samples, stored flat (memory is the tokens plus one offset per sample), and the
/// counts of how they were made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    ids: Vec<u32>,
    trained: Vec<bool>,
    /// `starts[i]..starts[i + 1]` is sample `i`; `starts.len() == len() + 1`.
    starts: Vec<usize>,
    stats: DatasetStats,
}

/// One tokenized sample: BOS first, then the template's tokens; `trained[i]` says whether
/// `input_ids[i]` carries loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample<'a> {
    pub input_ids: &'a [u32],
    pub trained: &'a [bool],
}

/// Where a dataset came from and what happened to its records on the way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatasetStats {
    /// The files read, in order, with how many records each held (before any split).
    pub files: Vec<FileRecords>,
    /// Records that belong to this dataset (after the eval split, before dropping).
    pub records: usize,
    /// Samples cut to `max_seq_length` (kept).
    pub truncated: usize,
    /// Samples longer than `max_seq_length`, dropped because `truncation = "drop"`.
    pub dropped_too_long: usize,
    /// Samples left with no trained token (e.g. a prompt that fills `max_seq_length`).
    pub dropped_untrained: usize,
}

/// A file and its record count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecords {
    pub path: PathBuf,
    pub records: usize,
}

impl Dataset {
    /// An empty dataset with the given counts; samples are added with [`Dataset::push`].
    pub(crate) fn with_stats(stats: DatasetStats) -> Self {
        Self {
            ids: Vec::new(),
            trained: Vec::new(),
            starts: vec![0],
            stats,
        }
    }

    /// A dataset of ready-made samples (`(input_ids, trained)` pairs of equal length), for
    /// tests and for callers that tokenize by themselves.
    pub fn from_samples<I>(samples: I) -> Self
    where
        I: IntoIterator<Item = (Vec<u32>, Vec<bool>)>,
    {
        let mut dataset = Self::with_stats(DatasetStats::default());
        for (ids, trained) in samples {
            let n = ids.len().min(trained.len());
            dataset.push(&ids[..n], &trained[..n]);
            dataset.stats.records += 1;
        }
        dataset
    }

    pub(crate) fn push(&mut self, ids: &[u32], trained: &[bool]) {
        self.ids.extend_from_slice(ids);
        self.trained.extend_from_slice(trained);
        self.starts.push(self.ids.len());
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.starts.len() - 1
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sample `index`, or `None` past the end.
    pub fn get(&self, index: usize) -> Option<Sample<'_>> {
        let start = *self.starts.get(index)?;
        let end = *self.starts.get(index + 1)?;
        Some(Sample {
            input_ids: &self.ids[start..end],
            trained: &self.trained[start..end],
        })
    }

    /// Every sample, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Sample<'_>> + '_ {
        self.starts.windows(2).map(|w| Sample {
            input_ids: &self.ids[w[0]..w[1]],
            trained: &self.trained[w[0]..w[1]],
        })
    }

    /// Token count of each sample, in order.
    pub fn lengths(&self) -> impl ExactSizeIterator<Item = usize> + '_ {
        self.starts.windows(2).map(|w| w[1] - w[0])
    }

    /// Token count of sample `index` (0 past the end).
    pub fn sample_len(&self, index: usize) -> usize {
        self.get(index).map_or(0, |s| s.input_ids.len())
    }

    /// Tokens in all samples.
    pub fn num_tokens(&self) -> usize {
        self.ids.len()
    }

    /// Tokens that carry loss in all samples.
    pub fn num_trained_tokens(&self) -> usize {
        self.trained.iter().filter(|&&t| t).count()
    }

    /// How the samples were made.
    pub fn stats(&self) -> &DatasetStats {
        &self.stats
    }

    pub(crate) fn stats_mut(&mut self) -> &mut DatasetStats {
        &mut self.stats
    }

    /// A 64-bit FNV-1a hash of every sample's ids and mask, stable across platforms and Rust
    /// versions: a resumed run checks it to be sure it batches the same data.
    pub fn fingerprint(&self) -> u64 {
        let mut hash = Fnv::new();
        for sample in self.iter() {
            hash.write(&(sample.input_ids.len() as u64).to_le_bytes());
            for (&id, &trained) in sample.input_ids.iter().zip(sample.trained) {
                hash.write(&id.to_le_bytes());
                hash.write(&[u8::from(trained)]);
            }
        }
        hash.finish()
    }
}

/// 64-bit FNV-1a.
pub(crate) struct Fnv(u64);

impl Fnv {
    pub fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}
