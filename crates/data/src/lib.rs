//! Instruction datasets for Ember: files → records → prompt text → token ids and loss masks →
//! batches. Host-side only: no tensors here, the trainer turns [`Batch`]es into them.
//!
//! ```no_run
//! use ember_data::{DataConfig, DatasetReport, Loader, LoaderOptions, Tokenizer, load};
//!
//! # fn main() -> Result<(), ember_data::DataError> {
//! let config: DataConfig = DataConfig::new("data/train.parquet");
//! let tokenizer = Tokenizer::from_file("tokenizer.json")?;
//! let splits = load(&config, &tokenizer)?;
//! println!("{}", DatasetReport::new(&config, &splits, &tokenizer, 2)?);
//! let options = LoaderOptions::new(&config, 2, tokenizer.pad_id());
//! let mut loader = Loader::new(splits.train, options)?;
//! let batch = loader.next_batch();
//! let resume_at = loader.position(); // serde: store it in the checkpoint
//! # Ok(()) }
//! ```
//!
//! # What a sample is
//!
//! A record's mapped columns ([`Columns`]) fill a template ([`TemplateSpec`]; the seed's
//! Alpaca-style prompt is built in). The text is tokenized as one string, as the seed's
//! `tokenizer(text)` does, with exactly one BOS in front and EOS after the response
//! (`<end_of_turn>` after each model turn in Gemma chat). [`TrainOn`] picks the tokens that
//! carry loss: all of them (the seed) or the response only. Samples longer than
//! `max_seq_length` are truncated or dropped ([`Truncation`]), and counted.
//!
//! # How the model consumes a [`Batch`]
//!
//! Every array is row-major `[batch_size, seq_len]`, right-padded to the longest row.
//!
//! * Attention: query `q` may attend to key `k` of its row iff
//!   `segment_ids[q] != 0 && segment_ids[k] == segment_ids[q] && k <= q`. Segment 0 is
//!   padding; a row holding one sample is segment 1; packed samples are 1, 2, 3, ... so
//!   attention never crosses samples. Without packing this reduces to causal + padding mask
//!   ([`Batch::attention_mask`]).
//! * Positions: `position_ids` (they restart at 0 for each packed sample); never `0..seq_len`.
//! * Loss: `labels` hold the unshifted input id where the token is trained and
//!   [`IGNORE_INDEX`] (-100) elsewhere. The model shifts by one (logits at `t` against
//!   `labels[t + 1]`), as Hugging Face does, and divides the summed cross-entropy by
//!   `num_trained_tokens`. The first token of every sample is never a label, so no prediction
//!   crosses a packed boundary.
//!
//! # Order and resume
//!
//! [`Loader`] shuffles rows per epoch with a permutation derived from the seed and the epoch
//! (implemented here, identical on every platform). [`LoaderPosition`] (serde) holds the
//! epoch, the batch within it and a fingerprint of the data and options;
//! [`Loader::resume`] continues with exactly the batches an uninterrupted run would see.

mod batch;
mod chat;
mod columns;
mod config;
mod dataset;
mod error;
mod ollama;
mod pack;
mod pipeline;
mod readers;
mod record;
mod report;
mod sampler;
mod shuffle;
mod template;
mod tokenize;
mod tokenizer;

pub use batch::{Batch, IGNORE_INDEX};
pub use chat::{ChatMessage, apply_chat_template};
pub use columns::{Columns, Layout};
pub use config::{DataConfig, EvalSplit, Format, TrainOn, Truncation};
pub use dataset::{Dataset, DatasetStats, FileRecords, Sample};
pub use error::{DataError, Location, Position};
pub use ollama::{Modelfile, ollama_template};
pub use pipeline::{Splits, load};
pub use report::{DatasetReport, Example, Percentiles, SplitSummary, TRAINED_CLOSE, TRAINED_OPEN, mark_trained};
pub use sampler::{Loader, LoaderOptions, LoaderPosition, eval_batches};
pub use template::{ALPACA_SEED, TemplateSpec, alpaca_seed_prompt};
pub use tokenizer::{TextStream, Tokenizer};
