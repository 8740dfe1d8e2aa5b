//! GGUF files (llama.cpp's format) of Gemma models: the container, ggml's (de)quantization,
//! llama.cpp's tensor names and metadata, and the embedded tokenizer, each mapped to and from
//! what a Hugging Face checkpoint holds.
//!
//! A `.gguf` path loads directly (a [`crate::ModelSource`] is either kind); [`convert`] writes
//! it out as a checkpoint directory, and [`export_gguf`] writes a model as a GGUF file.

mod arch;
mod config;
mod convert;
mod dequant;
mod export;
mod export_config;
mod export_vocab;
mod metadata;
mod names;
mod quant_mix;
mod quantize;
mod quantize_k;
mod reader;
mod tokenizer;
mod types;
mod weights;
mod writer;

pub use arch::Architecture;
pub use config::{gemma_config, hf_config};
pub use convert::{ConvertOptions, convert, write_checkpoint_files};
pub use export::{GgufFileType, export_gguf};
pub use export_config::llama_cpp_query_factor;
pub use names::gguf_name;
pub use reader::{GgufFile, TensorInfo, Value};
pub(crate) use tokenizer::generation_config;
pub use tokenizer::tokenizer;
pub use types::GgmlType;
pub use weights::GgufWeights;
pub use writer::{TensorPlan, write_gguf};
