//! The adapters alone as the GGUF file llama.cpp's `convert_lora_to_gguf.py` writes, which
//! `llama-cli --lora` (and Ollama's `ADAPTER`) applies to the base model's GGUF:
//! `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, and per projection
//! `blk.N.<name>.weight.lora_a` (PEFT's A, `[r, in]`) and `.lora_b` (B, `[out, r]`), in F32.
//! GGUF reverses dimensions, so these are the `ne = [in, r]` and `[r, out]` llama.cpp expects
//! with no transpose.

use std::path::Path;

use burn::tensor::{DType, backend::Backend};
use ember_model::gguf::{Architecture, GgmlType, TensorPlan, Value, gguf_name, llama_cpp_query_factor, write_gguf};
use ember_model::{GemmaForCausalLM, ModelError};

use crate::apply::projections;
use crate::error::{LoraError, Result};

/// Writes the adapters of `model` as a llama.cpp LoRA GGUF file at `path`.
///
/// llama.cpp scales every adapter by one `alpha / r`. When PEFT's scales are all of that form
/// with one alpha (no rsLoRA, no per-module patterns), that alpha is written as it is; otherwise
/// each B carries its own scale and alpha is 0, which llama.cpp reads as "scale 1".
pub fn export_gguf_lora<B: Backend>(model: &GemmaForCausalLM<B>, base_path: &Path, path: &Path) -> Result<()> {
    if let Some(i) = (model.model.layers.iter()).position(|layer| layer.adapters()[7..].iter().any(Option::is_some)) {
        return Err(LoraError::Config {
            path: path.to_path_buf(),
            key: format!("model.layers.{i}.experts"),
            message: "Ember does not write adapters on expert weights (target_parameters) as a llama.cpp \
                      LoRA file; export the merged model instead (`ember export`)"
                .into(),
        });
    }
    let config = &model.config;
    let arch = Architecture::of_family(config.family, base_path)?;
    // The base GGUF carries llama.cpp's query scale folded into q_proj (Gemma, Gemma 2); the
    // adapter's update to q_proj must carry it too.
    let query_factor = llama_cpp_query_factor(config, base_path)?;
    let mut adapters = Vec::new();
    for (i, layer) in model.model.layers.iter().enumerate() {
        for (name, linear) in projections(i, layer) {
            if let Some(lora) = &linear.lora {
                let rank = lora.a.val().dims()[0];
                adapters.push((name, lora, rank));
            }
        }
    }
    if adapters.is_empty() {
        return Err(LoraError::NoAdapter("GGUF LoRA export"));
    }
    let alpha = adapters[0].1.scale * adapters[0].2 as f64;
    let uniform = adapters
        .iter()
        .all(|(_, lora, rank)| (lora.scale * *rank as f64 - alpha).abs() <= 1e-9 * alpha.abs().max(1.0));
    let metadata = vec![
        ("general.architecture".to_string(), Value::String(arch.name().into())),
        ("general.type".into(), Value::String("adapter".into())),
        ("adapter.type".into(), Value::String("lora".into())),
        (
            "adapter.lora.alpha".into(),
            Value::F32(if uniform { alpha as f32 } else { 0.0 }),
        ),
    ];
    let mut plans = Vec::new();
    for (name, lora, _) in &adapters {
        let weight = gguf_name(arch, &format!("{name}.weight")).ok_or_else(|| LoraError::Config {
            path: path.to_path_buf(),
            key: name.clone(),
            message: format!("llama.cpp's {} has no tensor for this projection", arch.name()),
        })?;
        for (suffix, shape) in [("lora_a", lora.a.val().dims()), ("lora_b", lora.b.val().dims())] {
            plans.push(TensorPlan {
                name: format!("{weight}.{suffix}"),
                dims: vec![shape[1], shape[0]],
                ty: GgmlType::F32,
            });
        }
    }
    let mut next = 0;
    write_gguf(path, &metadata, &plans, |_| {
        let (name, lora, _) = &adapters[next / 2];
        let is_b = next % 2 == 1;
        next += 1;
        let tensor = if is_b { lora.b.val() } else { lora.a.val() };
        let mut values = tensor
            .cast(DType::F32)
            .into_data()
            .into_vec::<f32>()
            .map_err(|e| ModelError::Gguf {
                path: path.to_path_buf(),
                message: format!("cannot read the adapter of {name}: {e:?}"),
            })?;
        let mut factor = if is_b && !uniform { lora.scale as f32 } else { 1.0 };
        if is_b && name.ends_with("self_attn.q_proj") && arch != Architecture::Gemma3 {
            factor *= query_factor;
        }
        if factor != 1.0 {
            values.iter_mut().for_each(|v| *v *= factor);
        }
        Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    })?;
    Ok(())
}
