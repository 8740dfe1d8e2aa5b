//! The one error type of the data pipeline, and where in a file an error happened.

use std::fmt;
use std::path::PathBuf;

/// Where a record came from: the file and the line, array element or row.
///
/// Displayed as `train.jsonl:17`, `train.json: element 3 (line 12)`, `train.parquet: row 41`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file the record was read from.
    pub file: PathBuf,
    /// The position of the record inside the file.
    pub position: Position,
}

/// A record's position inside its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The whole file (its header, its schema, or its emptiness).
    File,
    /// A 1-based line (JSON Lines, CSV).
    Line(u64),
    /// A 0-based element of a top-level JSON array, and the 1-based line it starts on.
    Element { index: u64, line: u64 },
    /// A 0-based row of a Parquet file.
    Row(u64),
}

impl Location {
    /// A location naming `file` at `position`.
    pub fn new(file: impl Into<PathBuf>, position: Position) -> Self {
        Self {
            file: file.into(),
            position,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match self.position {
            Position::File => write!(f, "{file}"),
            Position::Line(line) => write!(f, "{file}:{line}"),
            Position::Element { index, line } => write!(f, "{file}: element {index} (line {line})"),
            Position::Row(row) => write!(f, "{file}: row {row}"),
        }
    }
}

/// Everything that can go wrong between a dataset file and a batch.
///
/// Messages are lowercase, name the file, line and column involved, and say how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("invalid [data] config: `{key}` {message}")]
    Config { key: &'static str, message: String },

    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid glob pattern `{pattern}`: {message}")]
    Glob { pattern: String, message: String },

    #[error("no dataset files match `{pattern}`: check `path` in the [data] config")]
    NoFiles { pattern: String },

    #[error(
        "cannot tell the format of {} from its extension: name it .jsonl, .json, .parquet or .csv, \
         or set `format` in the [data] config",
        path.display()
    )]
    UnknownFormat { path: PathBuf },

    #[error("{location}: malformed JSON: {message}")]
    Json { location: Location, message: String },

    #[error("{location}: invalid UTF-8{}: datasets must be UTF-8 text", column_suffix(column))]
    InvalidUtf8 { location: Location, column: Option<String> },

    #[error(
        "{location}: missing column `{column}`; the columns that exist are: {}; {}",
        list_or_none(available),
        missing_hint(column)
    )]
    MissingColumn {
        location: Location,
        column: String,
        available: Vec<String>,
    },

    #[error("{location}: column `{column}` holds {found} where {expected} is expected")]
    WrongType {
        location: Location,
        column: String,
        expected: &'static str,
        found: String,
    },

    #[error("{location}: {message}")]
    Csv { location: Location, message: String },

    #[error("{location}: {message}")]
    Parquet { location: Location, message: String },

    #[error("{location}: {message}")]
    Conversation { location: Location, message: String },

    #[error("the dataset at `{path}` holds no records")]
    EmptyDataset { path: String },

    #[error(
        "all {records} records of `{path}` were dropped ({too_long} longer than max_seq_length = \
         {max_seq_length}, {untrained} with no trained token left); raise max_seq_length or set \
         truncation = \"truncate\""
    )]
    NothingToTrain {
        path: String,
        records: usize,
        too_long: usize,
        untrained: usize,
        max_seq_length: usize,
    },

    #[error("template: {message}")]
    Template { message: String },

    #[error("tokenizer {}: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },

    #[error("tokenizer has no `{token}` token; {needed_for}")]
    MissingToken { token: String, needed_for: &'static str },

    #[error("tokenization failed: {message}")]
    Tokenize { message: String },

    #[error("cannot start {threads} tokenizer threads: {message}")]
    ThreadPool { threads: usize, message: String },

    #[error(
        "cannot resume the data loader: the checkpoint was saved with {what} {saved}, the run now \
         has {current}; resuming would not replay the batches of the interrupted run"
    )]
    ResumeMismatch {
        what: &'static str,
        saved: u64,
        current: u64,
    },
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".to_owned()
    } else {
        names.join(", ")
    }
}

fn missing_hint(column: &str) -> &'static str {
    if column.contains('[') {
        "each turn needs `role` and `content` (ShareGPT: `from` and `value`)"
    } else {
        "map the right one under [data.columns]"
    }
}

fn column_suffix(column: &Option<String>) -> String {
    column.as_ref().map(|c| format!(" in column `{c}`")).unwrap_or_default()
}
