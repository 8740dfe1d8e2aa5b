//! Importing GGUF files (llama.cpp's format) of Gemma models: the container, ggml's
//! dequantization, llama.cpp's tensor names and metadata, and the embedded tokenizer, each
//! mapped back to what a Hugging Face checkpoint holds.
//!
//! A `.gguf` path loads directly ([`crate::GemmaForCausalLM::load`],
//! [`crate::GemmaTokenizer::from_dir`]); [`convert`] writes it out as a checkpoint directory.

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

use std::path::Path;

pub use config::{gemma_config, hf_config};
pub use convert::{ConvertOptions, convert};
pub use reader::{GgufFile, TensorInfo, Value};
pub(crate) use tokenizer::generation_config;
pub use tokenizer::tokenizer;
pub use types::GgmlType;
pub use weights::GgufWeights;

/// Whether a model path names a GGUF file rather than a checkpoint directory: any file does
/// (a checkpoint is a directory); opening it checks that it really is GGUF.
pub fn is_gguf(path: &Path) -> bool {
    path.is_file()
}
