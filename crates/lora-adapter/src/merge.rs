//! Folding adapters into the base weights, and writing the result as a plain Hugging Face
//! checkpoint that transformers loads without PEFT.

use std::path::Path;

use burn::module::{Param, ParamId};
use burn::tensor::{DType, backend::Backend};
use ember_model::{FrozenWeight, GemmaForCausalLM, ModelSource, named_params, write_safetensors};

use crate::apply::projections_mut;
use crate::atomic::write_dir_atomically;
use crate::error::{LoraError, Result};

/// Replaces every projection's weight by `W + scale·BA`, and each adapted expert weight's
/// slices by `W[e] + scale·B_e·A_e` (as PEFT's `merge_and_unload`), computed in f32 and cast
/// once to the weight's dtype, and removes the adapters. A 4-bit weight's `W` is its
/// dequantized value, the weight the adapter was trained on; the sum is dense.
pub fn merge_lora<B: Backend>(mut model: GemmaForCausalLM<B>) -> Result<GemmaForCausalLM<B>> {
    let mut merged = 0;
    for (i, layer) in model.model.layers.iter_mut().enumerate() {
        for (_, linear) in projections_mut(i, layer) {
            if let Some(lora) = linear.lora.take() {
                let weight = linear.weight.val();
                let dtype = weight.dtype();
                let sum = (weight.cast(DType::F32) + lora.delta_weight()).cast(dtype);
                let id = match &linear.weight {
                    FrozenWeight::Dense(weight) => weight.id,
                    FrozenWeight::FourBit(_) => ParamId::new(),
                };
                linear.weight = FrozenWeight::Dense(Param::initialized(id, sum.set_require_grad(false)));
                merged += 1;
            }
        }
        let Some(experts) = layer.experts.as_mut() else {
            continue;
        };
        let num_experts = experts.num_experts();
        for (weight, lora) in [
            (&mut experts.gate_up_proj, experts.lora.gate_up_proj.take()),
            (&mut experts.down_proj, experts.lora.down_proj.take()),
        ] {
            if let Some(lora) = lora {
                let value = weight.val();
                let dtype = value.dtype();
                let sum = (value.cast(DType::F32) + lora.expert_delta_weights(num_experts)).cast(dtype);
                *weight = Param::initialized(weight.id, sum.set_require_grad(false));
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
/// with an index when large), and `config.json`, tokenizer and generation files from `base`
/// (a checkpoint directory or a GGUF file). Atomic: `out_dir` appears complete or not at all.
pub fn export_checkpoint<B: Backend>(
    model: &GemmaForCausalLM<B>,
    base: &ModelSource,
    out_dir: &Path,
    dtype: DType,
    max_shard_bytes: usize,
) -> Result<()> {
    let params = named_params(model);
    if params.iter().any(|p| p.name.contains(".lora.")) {
        return Err(LoraError::Config {
            path: out_dir.to_path_buf(),
            key: "merge".into(),
            message: "the model still carries adapters: merge them first".into(),
        });
    }
    write_dir_atomically(out_dir, |tmp| {
        // The small files first: they refuse a dtype no checkpoint can hold.
        base.write_checkpoint_files(tmp, dtype)?;
        let tensors = params
            .into_iter()
            // Rounded on the host: a device may lack the export dtype (WGPU has no bf16).
            .map(|p| Ok((p.name, p.shape, p.values.into_data().convert_dtype(dtype))));
        write_safetensors(tmp, tensors, dtype, max_shard_bytes)?;
        Ok(())
    })
}
