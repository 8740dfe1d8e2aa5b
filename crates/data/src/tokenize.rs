//! Rendered segments to token ids and a loss mask; truncation; tokenizing records in parallel.

use std::ops::Range;

use rayon::prelude::*;

use crate::config::{DataConfig, TrainOn, Truncation};
use crate::error::{DataError, Location};
use crate::record::Record;
use crate::template::{Formatter, Segment};
use crate::tokenizer::Tokenizer;

/// A tokenized sample: ids and, per id, whether it carries loss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Encoded {
    pub ids: Vec<u32>,
    pub trained: Vec<bool>,
}

/// Tokenizes segments: one BOS, then each run of text segments encoded as one string (so the
/// ids are those of the whole text, as the seed's `tokenizer(text)` gives), special tokens by
/// id. With `TrainOn::Completion` a token is trained iff its bytes overlap a response segment,
/// so every byte of the response is covered; with `TrainOn::All` every token after BOS is.
pub(crate) fn encode_segments(
    tokenizer: &Tokenizer,
    segments: &[Segment],
    train_on: TrainOn,
) -> Result<Encoded, DataError> {
    let all = train_on == TrainOn::All;
    let mut out = Encoded {
        ids: vec![tokenizer.bos_id()],
        trained: vec![false],
    };
    let mut text = String::new();
    let mut response_spans: Vec<Range<usize>> = Vec::new();
    for segment in segments {
        match segment {
            Segment::Text { text: t, response } => {
                if *response {
                    response_spans.push(text.len()..text.len() + t.len());
                }
                text.push_str(t);
            }
            Segment::Special { id, response } => {
                flush(tokenizer, &mut text, &mut response_spans, all, &mut out)?;
                out.ids.push(*id);
                out.trained.push(all || *response);
            }
        }
    }
    flush(tokenizer, &mut text, &mut response_spans, all, &mut out)?;
    Ok(out)
}

fn flush(
    tokenizer: &Tokenizer,
    text: &mut String,
    spans: &mut Vec<Range<usize>>,
    all: bool,
    out: &mut Encoded,
) -> Result<(), DataError> {
    if text.is_empty() {
        return Ok(());
    }
    let encoding = tokenizer.encode_text(text)?;
    out.ids.extend_from_slice(encoding.get_ids());
    out.trained.extend(
        encoding
            .get_offsets()
            .iter()
            .map(|&(start, end)| all || spans.iter().any(|s| start < s.end && end > s.start)),
    );
    text.clear();
    spans.clear();
    Ok(())
}

/// Why a record did not become a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// Longer than `max_seq_length` with `truncation = "drop"`.
    TooLong,
    /// No token carries loss (e.g. the response was truncated away).
    Untrained,
}

/// What became of one record.
#[derive(Debug)]
pub(crate) enum Outcome {
    Kept { sample: Encoded, truncated: bool },
    Dropped(Dropped),
}

/// Renders, tokenizes and length-limits one record.
pub(crate) fn process(
    record: Record,
    location: &Location,
    formatter: &Formatter,
    tokenizer: &Tokenizer,
    config: &DataConfig,
) -> Result<Outcome, DataError> {
    let segments = formatter.render(record);
    let mut sample = encode_segments(tokenizer, &segments, config.train_on).map_err(|e| match e {
        DataError::Tokenize { message } => DataError::Tokenize {
            message: format!("{location}: {message}"),
        },
        other => other,
    })?;
    let truncated = sample.ids.len() > config.max_seq_length;
    if truncated {
        if config.truncation == Truncation::Drop {
            return Ok(Outcome::Dropped(Dropped::TooLong));
        }
        sample.ids.truncate(config.max_seq_length);
        sample.trained.truncate(config.max_seq_length);
    }
    if !sample.trained.contains(&true) {
        return Ok(Outcome::Dropped(Dropped::Untrained));
    }
    Ok(Outcome::Kept { sample, truncated })
}

/// Tokenizes records on `pool`'s threads; the outcomes keep the records' order, so the result
/// does not depend on the number of threads.
pub(crate) fn process_all(
    pool: &rayon::ThreadPool,
    records: Vec<(Location, Record)>,
    formatter: &Formatter,
    tokenizer: &Tokenizer,
    config: &DataConfig,
) -> Result<Vec<Outcome>, DataError> {
    pool.install(|| {
        records
            .into_par_iter()
            .map(|(location, record)| process(record, &location, formatter, tokenizer, config))
            .collect()
    })
}
