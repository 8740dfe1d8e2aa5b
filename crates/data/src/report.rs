//! `DatasetReport`: what `ember data --config FILE` prints before anyone trains.

use std::fmt;

use crate::config::{DataConfig, TrainOn, Truncation};
use crate::dataset::{Dataset, DatasetStats, Sample};
use crate::error::DataError;
use crate::pipeline::Splits;
use crate::tokenizer::Tokenizer;

/// Counts, length percentiles and the first samples with their trained tokens marked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetReport {
    pub template: String,
    pub train_on: TrainOn,
    pub max_seq_length: usize,
    pub truncation: Truncation,
    pub train: SplitSummary,
    pub eval: Option<SplitSummary>,
    /// The first training samples, as decoded text with trained tokens marked.
    pub examples: Vec<Example>,
}

/// The numbers of one split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitSummary {
    pub stats: DatasetStats,
    pub samples: usize,
    pub tokens: usize,
    pub trained_tokens: usize,
    pub lengths: Percentiles,
}

/// Sample lengths in tokens (nearest-rank percentiles).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percentiles {
    pub min: usize,
    pub p50: usize,
    pub p90: usize,
    pub p95: usize,
    pub p99: usize,
    pub max: usize,
}

/// One sample, decoded, with every run of trained tokens inside `[[` and `]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub index: usize,
    pub tokens: usize,
    pub trained_tokens: usize,
    pub marked: String,
}

/// Opens a run of trained tokens in [`Example::marked`].
pub const TRAINED_OPEN: &str = "[[";
/// Closes a run of trained tokens in [`Example::marked`].
pub const TRAINED_CLOSE: &str = "]]";

impl DatasetReport {
    /// Summarises `splits`, rendering the first `examples` training samples.
    pub fn new(
        config: &DataConfig,
        splits: &Splits,
        tokenizer: &Tokenizer,
        examples: usize,
    ) -> Result<Self, DataError> {
        let layout = config.columns.layout()?;
        let examples = splits
            .train
            .iter()
            .take(examples)
            .enumerate()
            .map(|(index, sample)| {
                Ok(Example {
                    index,
                    tokens: sample.input_ids.len(),
                    trained_tokens: sample.trained.iter().filter(|&&t| t).count(),
                    marked: mark_trained(tokenizer, sample)?,
                })
            })
            .collect::<Result<_, DataError>>()?;
        Ok(Self {
            template: config.template_spec(&layout).name().to_owned(),
            train_on: config.train_on,
            max_seq_length: config.max_seq_length,
            truncation: config.truncation,
            train: SplitSummary::new(&splits.train),
            eval: splits.eval.as_ref().map(SplitSummary::new),
            examples,
        })
    }
}

impl SplitSummary {
    fn new(dataset: &Dataset) -> Self {
        let mut lengths: Vec<usize> = dataset.lengths().collect();
        lengths.sort_unstable();
        Self {
            stats: dataset.stats().clone(),
            samples: dataset.len(),
            tokens: dataset.num_tokens(),
            trained_tokens: dataset.num_trained_tokens(),
            lengths: Percentiles::of_sorted(&lengths),
        }
    }
}

impl Percentiles {
    /// Nearest-rank percentiles of sorted values (all 0 when there are none).
    pub fn of_sorted(sorted: &[usize]) -> Self {
        let rank = |p: usize| {
            let i = (p * sorted.len()).div_ceil(100).max(1) - 1;
            sorted.get(i).copied().unwrap_or(0)
        };
        Self {
            min: sorted.first().copied().unwrap_or(0),
            p50: rank(50),
            p90: rank(90),
            p95: rank(95),
            p99: rank(99),
            max: sorted.last().copied().unwrap_or(0),
        }
    }
}

/// Decodes `sample`, wrapping each run of trained tokens in `[[` `]]`.
pub fn mark_trained(tokenizer: &Tokenizer, sample: Sample<'_>) -> Result<String, DataError> {
    let mut out = String::new();
    let mut start = 0;
    while start < sample.input_ids.len() {
        let trained = sample.trained[start];
        let end = sample.trained[start..]
            .iter()
            .position(|&t| t != trained)
            .map_or(sample.input_ids.len(), |n| start + n);
        let text = tokenizer.decode_with_specials(&sample.input_ids[start..end])?;
        if trained {
            out.push_str(TRAINED_OPEN);
            out.push_str(&text);
            out.push_str(TRAINED_CLOSE);
        } else {
            out.push_str(&text);
        }
        start = end;
    }
    Ok(out)
}

impl fmt::Display for DatasetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let train_on = match self.train_on {
            TrainOn::All => "all tokens",
            TrainOn::Completion => "completions only",
        };
        let truncation = match self.truncation {
            Truncation::Truncate => "truncate",
            Truncation::Drop => "drop",
        };
        writeln!(
            f,
            "template {}, training on {train_on}, max_seq_length {} ({truncation})",
            self.template, self.max_seq_length
        )?;
        self.train.write(f, "train")?;
        if let Some(eval) = &self.eval {
            eval.write(f, "eval")?;
        }
        for example in &self.examples {
            writeln!(
                f,
                "\nsample {} ({} tokens, {} trained, inside {TRAINED_OPEN} {TRAINED_CLOSE}):\n{}",
                example.index, example.tokens, example.trained_tokens, example.marked
            )?;
        }
        Ok(())
    }
}

impl SplitSummary {
    fn write(&self, f: &mut fmt::Formatter<'_>, name: &str) -> fmt::Result {
        let s = &self.stats;
        writeln!(
            f,
            "{name}: {} records -> {} samples, {} tokens ({} trained)",
            s.records, self.samples, self.tokens, self.trained_tokens
        )?;
        for file in &s.files {
            writeln!(f, "  {} ({} records)", file.path.display(), file.records)?;
        }
        let l = &self.lengths;
        writeln!(
            f,
            "  tokens per sample: min {}, p50 {}, p90 {}, p95 {}, p99 {}, max {}",
            l.min, l.p50, l.p90, l.p95, l.p99, l.max
        )?;
        writeln!(
            f,
            "  truncated {}, dropped {} (too long) + {} (no trained token)",
            s.truncated, s.dropped_too_long, s.dropped_untrained
        )
    }
}
