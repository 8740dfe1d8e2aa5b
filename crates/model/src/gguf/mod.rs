//! Importing GGUF files (llama.cpp's format) of Gemma models: the container, ggml's
//! dequantization, llama.cpp's tensor names and metadata, and the embedded tokenizer, each
//! mapped back to what a Hugging Face checkpoint holds.
//!
//! A `.gguf` path loads directly (a [`crate::ModelSource`] is either kind); [`convert`] writes
//! it out as a checkpoint directory.

mod arch;
mod config;
mod convert;
mod dequant;
mod metadata;
mod names;
mod reader;
mod tokenizer;
mod types;
mod weights;

pub use config::{gemma_config, hf_config};
pub use convert::{ConvertOptions, convert, write_checkpoint_files};
pub use reader::{GgufFile, TensorInfo, Value};
pub(crate) use tokenizer::generation_config;
pub use tokenizer::tokenizer;
pub use types::GgmlType;
pub use weights::GgufWeights;
