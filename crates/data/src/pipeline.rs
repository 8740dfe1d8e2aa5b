//! `load`: files to tokenized train and eval datasets.

use tracing::{info, warn};

use crate::columns::Layout;
use crate::config::{DataConfig, EvalSplit};
use crate::dataset::{Dataset, DatasetStats, FileRecords};
use crate::error::{DataError, Location};
use crate::readers;
use crate::record::Record;
use crate::shuffle::{derive, permutation};
use crate::template::Formatter;
use crate::tokenize::{Dropped, Outcome, process_all};
use crate::tokenizer::Tokenizer;

/// Records tokenized per parallel step: enough to keep every thread busy, few enough that the
/// raw text in flight stays small whatever the file size.
const CHUNK: usize = 4096;

/// The stream id of the eval split's permutation (epochs use 0, 1, 2, ...).
const EVAL_STREAM: u64 = u64::MAX;

/// The training data and, if the config asks for it, the held-out data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splits {
    pub train: Dataset,
    pub eval: Option<Dataset>,
}

/// Reads, formats and tokenizes the dataset `config` names, on `config.num_proc` threads.
///
/// Fails on the first bad record, naming it; drops only what the config says may be dropped,
/// and counts it in [`DatasetStats`].
pub fn load(config: &DataConfig, tokenizer: &Tokenizer) -> Result<Splits, DataError> {
    config.validate()?;
    let layout = config.columns.layout()?;
    let formatter = Formatter::new(&config.template_spec(&layout), &layout, tokenizer)?;
    let threads = config.threads();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| DataError::ThreadPool {
            threads,
            message: e.to_string(),
        })?;
    let job = Job {
        config,
        layout: &layout,
        formatter: &formatter,
        tokenizer,
        pool: &pool,
    };
    let collected = job.collect(&config.path)?;
    let splits = match &config.eval {
        None => Splits {
            train: collected.finish(&config.path, config.max_seq_length)?,
            eval: None,
        },
        Some(EvalSplit::Path(path)) => Splits {
            train: collected.finish(&config.path, config.max_seq_length)?,
            eval: Some(job.collect(path)?.finish(path, config.max_seq_length)?),
        },
        Some(EvalSplit::Fraction(fraction)) => {
            let (train, eval) = collected.split(*fraction, config.seed)?;
            Splits {
                train: train.finish(&config.path, config.max_seq_length)?,
                eval: Some(eval.finish(&format!("{} (eval fraction)", config.path), config.max_seq_length)?),
            }
        }
    };
    for (name, dataset) in [("train", Some(&splits.train)), ("eval", splits.eval.as_ref())] {
        let Some(dataset) = dataset else { continue };
        let stats = dataset.stats();
        info!(
            split = name,
            records = stats.records,
            samples = dataset.len(),
            tokens = dataset.num_tokens(),
            "tokenized"
        );
        if stats.truncated + stats.dropped_too_long + stats.dropped_untrained > 0 {
            warn!(
                split = name,
                truncated = stats.truncated,
                dropped_too_long = stats.dropped_too_long,
                dropped_untrained = stats.dropped_untrained,
                max_seq_length = config.max_seq_length,
                "samples truncated or dropped"
            );
        }
    }
    Ok(splits)
}

/// What one load needs at hand.
struct Job<'a> {
    config: &'a DataConfig,
    layout: &'a Layout,
    formatter: &'a Formatter,
    tokenizer: &'a Tokenizer,
    pool: &'a rayon::ThreadPool,
}

impl Job<'_> {
    /// Streams every file of `path` through extraction and parallel tokenization.
    fn collect(&self, path: &str) -> Result<Collected, DataError> {
        let mut collected = Collected::new(Vec::new(), 0);
        for file in readers::discover(path)? {
            info!(file = %file.display(), "reading");
            let before = collected.records;
            let mut chunk = Vec::with_capacity(CHUNK);
            for raw in readers::open(&file, self.config.format, self.layout)? {
                let raw = raw?;
                let record = Record::from_json(raw.object, self.layout, &raw.location)?;
                chunk.push((raw.location, record));
                if chunk.len() == CHUNK {
                    self.tokenize(std::mem::take(&mut chunk), &mut collected)?;
                }
            }
            self.tokenize(chunk, &mut collected)?;
            collected.files.push(FileRecords {
                path: file,
                records: collected.records - before,
            });
        }
        Ok(collected)
    }

    fn tokenize(&self, chunk: Vec<(Location, Record)>, collected: &mut Collected) -> Result<(), DataError> {
        let outcomes = process_all(self.pool, chunk, self.formatter, self.tokenizer, self.config)?;
        for outcome in outcomes {
            collected.add(outcome);
        }
        Ok(())
    }
}

/// Tokenized samples before the eval split, with the record each came from.
struct Collected {
    files: Vec<FileRecords>,
    records: usize,
    samples: Dataset,
    /// The record index of each sample.
    sample_records: Vec<usize>,
    truncated: Vec<usize>,
    dropped: Vec<(usize, Dropped)>,
}

impl Collected {
    fn new(files: Vec<FileRecords>, records: usize) -> Self {
        Self {
            files,
            records,
            samples: Dataset::with_stats(DatasetStats::default()),
            sample_records: Vec::new(),
            truncated: Vec::new(),
            dropped: Vec::new(),
        }
    }

    fn add(&mut self, outcome: Outcome) {
        let record = self.records;
        self.records += 1;
        match outcome {
            Outcome::Kept { sample, truncated } => {
                if truncated {
                    self.truncated.push(record);
                }
                self.samples.push(&sample.ids, &sample.trained);
                self.sample_records.push(record);
            }
            Outcome::Dropped(reason) => self.dropped.push((record, reason)),
        }
    }

    /// Moves `fraction` of the records (chosen by a permutation from `seed`) to a second set.
    fn split(self, fraction: f64, seed: u64) -> Result<(Collected, Collected), DataError> {
        let n = self.records;
        let n_eval = (n as f64 * fraction).round() as usize;
        if n_eval == 0 || n_eval >= n {
            return Err(DataError::Config {
                key: "eval.fraction",
                message: format!(
                    "{fraction} of {n} records is {n_eval} eval records; it must leave at least \
                     one record on each side"
                ),
            });
        }
        let mut is_eval = vec![false; n];
        for record in permutation(n, derive(seed, EVAL_STREAM)).into_iter().take(n_eval) {
            is_eval[record] = true;
        }
        let mut sides = [
            Collected::new(self.files.clone(), n - n_eval),
            Collected::new(self.files, n_eval),
        ];
        for (sample, &record) in self.samples.iter().zip(&self.sample_records) {
            let side = &mut sides[usize::from(is_eval[record])];
            side.samples.push(sample.input_ids, sample.trained);
            side.sample_records.push(record);
        }
        for record in self.truncated {
            sides[usize::from(is_eval[record])].truncated.push(record);
        }
        for dropped in self.dropped {
            sides[usize::from(is_eval[dropped.0])].dropped.push(dropped);
        }
        let [train, eval] = sides;
        Ok((train, eval))
    }

    fn finish(self, path: &str, max_seq_length: usize) -> Result<Dataset, DataError> {
        let count = |reason| self.dropped.iter().filter(|(_, r)| *r == reason).count();
        let stats = DatasetStats {
            files: self.files,
            records: self.records,
            truncated: self.truncated.len(),
            dropped_too_long: count(Dropped::TooLong),
            dropped_untrained: count(Dropped::Untrained),
        };
        if stats.records == 0 {
            return Err(DataError::EmptyDataset { path: path.to_owned() });
        }
        if self.samples.is_empty() {
            return Err(DataError::NothingToTrain {
                path: path.to_owned(),
                records: stats.records,
                too_long: stats.dropped_too_long,
                untrained: stats.dropped_untrained,
                max_seq_length,
            });
        }
        let mut dataset = self.samples;
        *dataset.stats_mut() = stats;
        Ok(dataset)
    }
}
