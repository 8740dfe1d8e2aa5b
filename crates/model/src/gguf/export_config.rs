//! A model's architecture as the `{arch}.*` metadata llama.cpp reads (what
//! `convert_hf_to_gguf.py` writes for Gemma, Gemma 2 and Gemma 3), refusing what llama.cpp
//! would compute differently: it hard-codes each generation's layer pattern, local RoPE base and
//! soft-capping, so a config that departs from them cannot be stated in GGUF.

use std::path::Path;

use super::arch::Architecture;
use super::config::{
    GEMMA2_SLIDING_WINDOW_PATTERN, GEMMA3_LOCAL_ROPE_THETA, GEMMA3_SLIDING_WINDOW_PATTERN, is_global_layer,
};
use super::reader::Value;
use crate::config::{Activation, GemmaConfig, LayerType};
use crate::error::{ModelError, Result};

/// The metadata, and the factor the queries must be multiplied by so that llama.cpp's fixed
/// query scale (see [`Architecture::query_pre_attn_scalar`]) gives the config's.
pub(super) struct Hyperparameters {
    pub metadata: Vec<(String, Value)>,
    pub query_factor: f32,
}

/// The factor a GGUF export multiplies the queries by (see [`Hyperparameters::query_factor`]),
/// for an adapter exported beside it; errors as for the model's export.
pub fn llama_cpp_query_factor(config: &GemmaConfig, path: &Path) -> Result<f32> {
    Ok(hyperparameters(config, path)?.query_factor)
}

/// `config` (read from `path`, named in errors) as llama.cpp's hyperparameters.
pub(super) fn hyperparameters(config: &GemmaConfig, path: &Path) -> Result<Hyperparameters> {
    let arch = Architecture::of_family(config.family, path)?;
    let refuse = |key: &str, message: String| ModelError::Config {
        path: path.to_path_buf(),
        key: key.to_string(),
        message: format!("{message}; llama.cpp's {} cannot run this model", arch.name()),
    };
    if config.activation != Activation::GeluTanh {
        return Err(refuse(
            "hidden_activation",
            "exact GELU; llama.cpp uses the tanh approximation".into(),
        ));
    }
    if !config.tie_word_embeddings {
        return Err(refuse(
            "tie_word_embeddings",
            "an output head of its own; llama.cpp reads the head from the embedding".into(),
        ));
    }
    let layers = config.num_hidden_layers();
    let u32_of = |key: &str, n: usize| {
        u32::try_from(n)
            .map(Value::U32)
            .map_err(|_| refuse(key, format!("{n} does not fit GGUF's u32")))
    };
    let key = |name: &str| format!("{}.{name}", arch.name());
    let mut metadata = vec![
        (
            key("context_length"),
            u32_of("max_position_embeddings", config.max_position_embeddings)?,
        ),
        (key("embedding_length"), u32_of("hidden_size", config.hidden_size)?),
        (key("block_count"), u32_of("num_hidden_layers", layers)?),
        (
            key("feed_forward_length"),
            u32_of("intermediate_size", config.intermediate_size)?,
        ),
        (
            key("attention.head_count"),
            u32_of("num_attention_heads", config.num_attention_heads)?,
        ),
        (
            key("attention.head_count_kv"),
            u32_of("num_key_value_heads", config.num_key_value_heads)?,
        ),
        (
            key("attention.layer_norm_rms_epsilon"),
            Value::F32(config.rms_norm_eps as f32),
        ),
        (key("attention.key_length"), u32_of("head_dim", config.head_dim)?),
        (key("attention.value_length"), u32_of("head_dim", config.head_dim)?),
        (key("rope.freq_base"), Value::F32(config.rope_full.theta as f32)),
    ];
    if config.rope_full.factor != 1.0 {
        metadata.push((key("rope.scaling.type"), Value::String("linear".into())));
        metadata.push((key("rope.scaling.factor"), Value::F32(config.rope_full.factor as f32)));
    }
    // The layer pattern llama.cpp assumes, if any layer slides.
    let pattern = match arch {
        Architecture::Gemma => None,
        Architecture::Gemma2 => Some(GEMMA2_SLIDING_WINDOW_PATTERN),
        Architecture::Gemma3 => config
            .layer_types
            .contains(&LayerType::Sliding)
            .then_some(GEMMA3_SLIDING_WINDOW_PATTERN),
    };
    let expected: Vec<LayerType> = (0..layers)
        .map(|i| match pattern {
            Some(p) if !is_global_layer(i, p) => LayerType::Sliding,
            _ => LayerType::Full,
        })
        .collect();
    if config.layer_types != expected {
        return Err(refuse(
            "layer_types",
            format!("{:?} differs from the fixed pattern {expected:?}", config.layer_types),
        ));
    }
    if let (Some(_), Some(window)) = (pattern, config.sliding_window) {
        metadata.push((key("attention.sliding_window"), u32_of("sliding_window", window)?));
    }
    let local_rope_ok = match (arch, pattern) {
        (Architecture::Gemma3, Some(_)) => {
            config.rope_sliding.theta == GEMMA3_LOCAL_ROPE_THETA && config.rope_sliding.factor == 1.0
        }
        (_, Some(_)) => config.rope_sliding == config.rope_full,
        (_, None) => true,
    };
    if !local_rope_ok {
        return Err(refuse(
            "rope_local_base_freq",
            format!("sliding layers' RoPE {:?} is not the fixed one", config.rope_sliding),
        ));
    }
    // Gemma 2 always soft-caps both (llama.cpp's defaults are 50 and 30); Gemma 3 only the
    // logits, when a value is given; Gemma 1 never.
    let attn_cap = config.attn_logit_softcapping;
    let final_cap = config.final_logit_softcapping;
    match arch {
        Architecture::Gemma2 => {
            let (Some(attn), Some(last)) = (attn_cap, final_cap) else {
                return Err(refuse(
                    "attn_logit_softcapping",
                    "Gemma 2 without soft-capping of attention and logits".into(),
                ));
            };
            metadata.push((key("attn_logit_softcapping"), Value::F32(attn as f32)));
            metadata.push((key("final_logit_softcapping"), Value::F32(last as f32)));
        }
        Architecture::Gemma3 | Architecture::Gemma if attn_cap.is_some() => {
            return Err(refuse("attn_logit_softcapping", "attention soft-capping".into()));
        }
        Architecture::Gemma if final_cap.is_some() => {
            return Err(refuse("final_logit_softcapping", "logit soft-capping".into()));
        }
        Architecture::Gemma3 => {
            if let Some(last) = final_cap {
                metadata.push((key("final_logit_softcapping"), Value::F32(last as f32)));
            }
        }
        Architecture::Gemma => {}
    }
    let fixed = arch.query_pre_attn_scalar(layers, config.hidden_size, config.num_attention_heads, config.head_dim);
    Ok(Hyperparameters {
        metadata,
        query_factor: (fixed as f64 / config.query_pre_attn_scalar).sqrt() as f32,
    })
}
