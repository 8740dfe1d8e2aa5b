//! Folding adapters into the base weights, and writing the result as a plain Hugging Face
//! checkpoint that transformers loads without PEFT.

use std::path::Path;

use burn::module::Param;
use burn::tensor::{DType, backend::Backend};
use ember_model::{GemmaForCausalLM, named_params, torch_dtype_name, write_json, write_safetensors};
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

/// Writes `model` (adapters merged or none) as a checkpoint in `dtype`: safetensors (sharded
/// with an index when large), `config.json` from `base_dir` with the new dtype, and the
/// tokenizer and generation files copied. Atomic: `out_dir` appears complete or not at all.
pub fn export_checkpoint<B: Backend>(
    model: &GemmaForCausalLM<B>,
    base_dir: &Path,
    out_dir: &Path,
    dtype: DType,
    max_shard_bytes: usize,
) -> Result<()> {
    let dtype_name = torch_dtype_name(dtype).ok_or_else(|| LoraError::Config {
        path: out_dir.to_path_buf(),
        key: "dtype".into(),
        message: format!("cannot export in {dtype:?}; use f32, bf16 or f16"),
    })?;
    let params = named_params(model);
    if params.iter().any(|p| p.name.contains(".lora.")) {
        return Err(LoraError::Config {
            path: out_dir.to_path_buf(),
            key: "merge".into(),
            message: "the model still carries adapters: merge them first".into(),
        });
    }
    write_dir_atomically(out_dir, |tmp| {
        let tensors = params
            .into_iter()
            // Rounded on the host: a device may lack the export dtype (WGPU has no bf16).
            .map(|p| Ok((p.name, p.shape, p.values.into_data().convert_dtype(dtype))));
        write_safetensors(tmp, tensors, dtype, max_shard_bytes)?;

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
