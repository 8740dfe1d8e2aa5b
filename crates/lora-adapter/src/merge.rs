//! Folding adapters into the base weights, and writing the result as a plain Hugging Face
//! checkpoint that transformers loads without PEFT.

use std::path::Path;

use burn::module::Param;
use burn::tensor::{DType, backend::Backend};
use ember_model::{GemmaForCausalLM, named_params};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::Value;

use crate::apply::projections_mut;
use crate::atomic::write_dir_atomically;
use crate::error::{LoraError, Result};

/// Files of the base checkpoint an exported model needs besides its weights.
const COPIED_FILES: &[&str] = &[
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
];

/// Shards of an exported checkpoint hold at most this many bytes (transformers' default is 5 GB).
pub const MAX_SHARD_BYTES: usize = 2 << 30;

/// Replaces every projection's weight by `W + scale·BA`, computed in f32 and cast once to
/// the weight's dtype, and removes the adapters.
pub fn merge_lora<B: Backend>(mut model: GemmaForCausalLM<B>) -> Result<GemmaForCausalLM<B>> {
    let mut merged = 0;
    for (i, layer) in model.model.layers.iter_mut().enumerate() {
        for (_, linear) in projections_mut(i, layer) {
            if let Some(lora) = linear.lora.take() {
                let weight = linear.weight.val();
                let dtype = weight.dtype();
                let sum = (weight.cast(DType::F32) + lora.delta_weight()).cast(dtype);
                linear.weight = Param::initialized(linear.weight.id, sum.set_require_grad(false));
                merged += 1;
            }
        }
    }
    if merged == 0 {
        return Err(LoraError::NoAdapter("merge"));
    }
    Ok(model)
}

/// Writes `model` (adapters merged or none) as a checkpoint in `dtype`: sharded safetensors
/// with an index, `config.json` from `base_dir` with the new dtype, and the tokenizer and
/// generation files copied. Atomic: `out_dir` appears complete or not at all.
pub fn export_checkpoint<B: Backend>(
    model: &GemmaForCausalLM<B>,
    base_dir: &Path,
    out_dir: &Path,
    dtype: DType,
    max_shard_bytes: usize,
) -> Result<()> {
    let (st_dtype, dtype_name) = match dtype {
        DType::F32 => (Dtype::F32, "float32"),
        DType::BF16 => (Dtype::BF16, "bfloat16"),
        DType::F16 => (Dtype::F16, "float16"),
        other => {
            return Err(LoraError::Config {
                path: out_dir.to_path_buf(),
                key: "dtype".into(),
                message: format!("cannot export in {other:?}; use f32, bf16 or f16"),
            });
        }
    };
    let params = named_params(model);
    if params.iter().any(|p| p.name.contains(".lora.")) {
        return Err(LoraError::Config {
            path: out_dir.to_path_buf(),
            key: "merge".into(),
            message: "the model still carries adapters: merge them first".into(),
        });
    }
    write_dir_atomically(out_dir, |tmp| {
        // Group tensors into shards in declaration order.
        let mut shards: Vec<Vec<(String, Vec<usize>, Vec<u8>)>> = vec![Vec::new()];
        let mut shard_bytes = 0;
        for param in params {
            let data = param.values.cast(dtype).into_data();
            let bytes = data.as_bytes().to_vec();
            if shard_bytes > 0 && shard_bytes + bytes.len() > max_shard_bytes {
                shards.push(Vec::new());
                shard_bytes = 0;
            }
            shard_bytes += bytes.len();
            shards
                .last_mut()
                .expect("one shard at least")
                .push((param.name, param.shape, bytes));
        }
        let count = shards.len();
        let mut weight_map = serde_json::Map::new();
        let mut total = 0;
        for (i, shard) in shards.iter().enumerate() {
            let file = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
            let path = tmp.join(&file);
            let views = shard
                .iter()
                .map(|(name, shape, bytes)| {
                    total += bytes.len();
                    weight_map.insert(name.clone(), Value::String(file.clone()));
                    TensorView::new(st_dtype, shape.clone(), bytes).map(|v| (name.clone(), v))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| safetensors_error(&path, e))?;
            let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
            safetensors::serialize_to_file(views, Some(metadata), &path).map_err(|e| safetensors_error(&path, e))?;
        }
        let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_json(&tmp.join("model.safetensors.index.json"), &index)?;

        let config_path = base_dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| LoraError::io(&config_path, e))?;
        let mut config: Value = serde_json::from_str(&text).map_err(|source| LoraError::Json {
            path: config_path.clone(),
            source,
        })?;
        if let Some(map) = config.as_object_mut() {
            // transformers 5 writes `dtype`, 4.x `torch_dtype`: keep whichever the base used.
            let key = if map.contains_key("dtype") {
                "dtype"
            } else {
                "torch_dtype"
            };
            map.insert(key.into(), Value::String(dtype_name.into()));
        }
        write_json(&tmp.join("config.json"), &config)?;
        for name in COPIED_FILES {
            let from = base_dir.join(name);
            if from.exists() {
                std::fs::copy(&from, tmp.join(name)).map_err(|e| LoraError::io(&from, e))?;
            }
        }
        Ok(())
    })
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("a JSON value serialises");
    std::fs::write(path, text + "\n").map_err(|e| LoraError::io(path, e))
}

fn safetensors_error(path: &Path, e: safetensors::SafeTensorError) -> LoraError {
    LoraError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}
