//! A GGUF model as a Hugging Face checkpoint directory that transformers and Ember load.

use std::path::Path;

use burn::tensor::{DType, TensorData};
use indicatif::ProgressBar;

use super::config::hf_config;
use super::reader::GgufFile;
use super::tokenizer::{generation_config, tokenizer, tokenizer_config};
use super::weights::GgufWeights;
use crate::config::GemmaConfig;
use crate::error::{ModelError, Result};
use crate::shards::{MAX_SHARD_BYTES, torch_dtype_name, write_json, write_safetensors};

/// How to write the checkpoint.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// The dtype of the written weights (f32, bf16 or f16); dequantization is always in f32.
    pub dtype: DType,
    pub max_shard_bytes: usize,
    /// Advanced by the f32 bytes dequantized; hidden by default.
    pub progress: ProgressBar,
}

impl ConvertOptions {
    pub fn new(dtype: DType) -> Self {
        Self {
            dtype,
            max_shard_bytes: MAX_SHARD_BYTES,
            progress: ProgressBar::hidden(),
        }
    }
}

/// Writes the model in the GGUF file `gguf` into the directory `out` (which must exist):
/// `config.json`, the weights as safetensors, `tokenizer.json`, `tokenizer_config.json` and
/// `generation_config.json`. Callers wanting all-or-nothing write into a temporary directory
/// and rename it (`ember_lora::write_dir_atomically`).
pub fn convert(gguf: &Path, out: &Path, options: &ConvertOptions) -> Result<()> {
    let file = GgufFile::open(gguf)?;
    let dtype_name = torch_dtype_name(options.dtype).ok_or_else(|| ModelError::Config {
        path: out.to_path_buf(),
        key: "dtype".into(),
        message: format!("cannot write weights in {:?}; use f32, bf16 or f16", options.dtype),
    })?;
    write_checkpoint_files(&file, out, dtype_name)?;
    let weights = GgufWeights::new(&file)?;
    options.progress.set_length(4 * weights.element_count());
    let tensors = weights.names().into_iter().map(|name| {
        let (shape, values) = weights.read_f32(name)?;
        options.progress.inc(4 * values.len() as u64);
        Ok((name.to_string(), shape.clone(), TensorData::new(values, shape)))
    });
    write_safetensors(out, tensors, options.dtype, options.max_shard_bytes)?;
    options.progress.finish_and_clear();
    Ok(())
}

/// Writes what a checkpoint directory holds besides its weights, from the GGUF file's
/// metadata: `config.json` (weights in `dtype_name`), `generation_config.json`,
/// `tokenizer_config.json` and `tokenizer.json`.
pub fn write_checkpoint_files(file: &GgufFile, out: &Path, dtype_name: &str) -> Result<()> {
    let config = hf_config(file, Some(dtype_name))?;
    // Refuse what Ember could not load before writing anything.
    GemmaConfig::parse(&config.to_string(), file.path())?;
    write_json(&out.join("config.json"), &config)?;
    write_json(&out.join("generation_config.json"), &generation_config(file)?)?;
    write_json(&out.join("tokenizer_config.json"), &tokenizer_config(file)?)?;
    let tokenizer_path = out.join("tokenizer.json");
    tokenizer(file)?
        .save(&tokenizer_path, false)
        .map_err(|e| ModelError::Tokenizer {
            path: tokenizer_path.clone(),
            message: e.to_string(),
        })
}
