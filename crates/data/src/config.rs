//! `DataConfig`: the `[data]` table of Ember's TOML run config.
//!
//! ```toml
//! [data]
//! path = "data/train-*.parquet"      # file, directory or glob
//! template = "alpaca-seed"           # the seed's prompt, verbatim
//! train_on = "completion"            # loss on responses only (the seed trains on "all")
//! max_seq_length = 2048
//! eval = { fraction = 0.05 }
//! ```

use serde::{Deserialize, Serialize};

use crate::columns::Columns;
use crate::error::DataError;
use crate::template::TemplateSpec;

/// Where the training data lives and how it becomes token sequences.
///
/// Every key is optional except `path`; unknown keys are rejected by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A file, a directory (every `.jsonl`, `.json`, `.parquet` and `.csv` file below it, in
    /// sorted order, hidden entries skipped; the report lists the files read) or a glob
    /// (`data/train-*.parquet`). Several files read as one dataset.
    /// Relative paths are resolved against the working directory. Required: there is no
    /// sensible default dataset.
    pub path: String,

    /// File format. Default `"auto"`: by extension (`.jsonl`, `.json`, `.parquet`, `.csv`; a
    /// `.json` file whose first character is `{` is JSON Lines, which is what Hugging Face
    /// `Dataset.to_json` writes).
    #[serde(default)]
    pub format: Format,

    /// Which columns hold the text. Default: `instruction`, `input`, `output` (the seed's
    /// dataset). Also `{ prompt, completion }`, `{ messages }` (chat `[{role, content}]`) or
    /// `{ conversations }` (ShareGPT `[{from, value}]`); see [`Columns`].
    #[serde(default)]
    pub columns: Columns,

    /// How a record becomes text. Default: `"alpaca-seed"` for instruction columns (the seed's
    /// template), `"gemma-chat"` for chat columns, and `{ custom = "{prompt}{completion}" }`
    /// (plain concatenation, as TRL does) for prompt/completion columns. See [`TemplateSpec`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateSpec>,

    /// Which tokens carry loss. Default `"all"`: what the seed does. `"completion"` trains on
    /// the response (and its EOS) only, or on the assistant turns of chat data.
    #[serde(default)]
    pub train_on: TrainOn,

    /// Longest sample in tokens, BOS and EOS included. Default 2048: the seed's value, and
    /// long enough for almost every instruction sample.
    #[serde(default = "default_max_seq_length")]
    pub max_seq_length: usize,

    /// What to do with a sample longer than `max_seq_length`. Default `"truncate"` (keep the
    /// first `max_seq_length` tokens, as the seed does); `"drop"` removes it. Both are counted
    /// in the report.
    #[serde(default)]
    pub truncation: Truncation,

    /// Pack several samples into each `max_seq_length` row. Attention never crosses samples
    /// and positions restart per sample (see [`crate::Batch`]). Default false: the seed does
    /// not pack.
    #[serde(default)]
    pub packing: bool,

    /// Put samples of similar length in the same batch (Hugging Face's `group_by_length`:
    /// shuffled mega-batches of 50 batches, each sorted by length) to waste less padding.
    /// Default false, as the seed. Cannot be combined with `packing`.
    #[serde(default)]
    pub group_by_length: bool,

    /// Shuffle the sample order every epoch (from `seed` and the epoch number). Default true,
    /// as Hugging Face's Trainer.
    #[serde(default = "default_true")]
    pub shuffle: bool,

    /// Seed of the shuffles and of the eval split. Default 3407, the seed recipe's
    /// `random_state`. The same seed gives the same batches on every machine.
    #[serde(default = "default_seed")]
    pub seed: u64,

    /// Held-out data: `{ fraction = 0.05 }` of the records (chosen from `seed`) or
    /// `{ path = "eval.jsonl" }` (read with the same format, columns and template). Default:
    /// none, as the seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalSplit>,

    /// Tokenizer threads. Default: every core (the seed uses `dataset_num_proc = 2`, the core
    /// count of its machine). Tokenized results do not depend on this number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_proc: Option<usize>,
}

/// The on-disk format of the dataset files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Decide per file from its extension (and, for `.json`, its first character).
    #[default]
    Auto,
    /// One JSON object per line.
    Jsonl,
    /// A JSON array of objects (or JSON Lines, if the first character is `{`).
    Json,
    /// Apache Parquet, as Hugging Face `datasets` writes it.
    Parquet,
    /// Comma-separated values with a header line.
    Csv,
}

/// Which tokens of a sample carry loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainOn {
    /// Every token after BOS: the prompt, the response and EOS (the seed).
    #[default]
    All,
    /// The response and its EOS only (assistant turns and their `<end_of_turn>` for chat).
    Completion,
}

/// What happens to a sample longer than `max_seq_length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Truncation {
    /// Keep its first `max_seq_length` tokens.
    #[default]
    Truncate,
    /// Leave it out of the dataset.
    Drop,
}

/// Where evaluation data comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum EvalSplit {
    /// This fraction of the records (strictly between 0 and 1), chosen from `seed`.
    Fraction(f64),
    /// A separate file, directory or glob.
    Path(String),
}

fn default_max_seq_length() -> usize {
    2048
}

fn default_true() -> bool {
    true
}

fn default_seed() -> u64 {
    3407
}

impl DataConfig {
    /// The defaults for the data at `path`.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            format: Format::default(),
            columns: Columns::default(),
            template: None,
            train_on: TrainOn::default(),
            max_seq_length: default_max_seq_length(),
            truncation: Truncation::default(),
            packing: false,
            group_by_length: false,
            shuffle: default_true(),
            seed: default_seed(),
            eval: None,
            num_proc: None,
        }
    }

    /// Checks the values serde cannot: ranges, conflicting options, columns and template.
    pub fn validate(&self) -> Result<(), DataError> {
        let bad = |key, message: &str| {
            Err(DataError::Config {
                key,
                message: message.to_owned(),
            })
        };
        if self.path.trim().is_empty() {
            return bad("path", "is empty: name the dataset file, directory or glob");
        }
        if self.max_seq_length < 2 {
            return bad(
                "max_seq_length",
                &format!("= {}: must be at least 2 (BOS and one token)", self.max_seq_length),
            );
        }
        if self.num_proc == Some(0) {
            return bad("num_proc", "= 0: must be at least 1 (or left out for every core)");
        }
        if self.packing && self.group_by_length {
            return bad(
                "group_by_length",
                "cannot be combined with packing (packed rows are all about max_seq_length \
                 long); set one of them to false",
            );
        }
        if let Some(EvalSplit::Fraction(f)) = self.eval
            && !(f > 0.0 && f < 1.0)
        {
            return bad("eval.fraction", &format!("= {f}: must be strictly between 0 and 1"));
        }
        let layout = self.columns.layout()?;
        self.template_spec(&layout).check(&layout)
    }

    /// The template in effect: the configured one, or the default for the column layout.
    pub fn template_spec(&self, layout: &crate::columns::Layout) -> TemplateSpec {
        self.template
            .clone()
            .unwrap_or_else(|| TemplateSpec::default_for(layout))
    }

    /// Tokenizer threads in effect.
    pub fn threads(&self) -> usize {
        self.num_proc
            .unwrap_or_else(|| std::thread::available_parallelism().map(usize::from).unwrap_or(1))
    }
}
