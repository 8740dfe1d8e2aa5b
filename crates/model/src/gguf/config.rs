//! A transformers `config.json` from a GGUF file's metadata.
//!
//! GGUF keeps what llama.cpp reads; what llama.cpp hard-codes per architecture is hard-coded
//! here the same way (`llama-model.cpp`'s hparams): Gemma 3's local RoPE base of 10 000 and
//! every sixth layer global, Gemma 2's alternating layers and default soft-caps, and the query
//! scale `hidden / heads` of the 27B models (`head_dim` for the others). The keys written are
//! transformers 4.x's, which 5.x reads too.

use serde_json::{Value, json};

use super::arch::Architecture;
use super::reader::GgufFile;
use crate::config::GemmaConfig;
use crate::error::Result;

/// Gemma 3's local (sliding-window) layers use this RoPE base, which GGUF does not store.
pub(super) const GEMMA3_LOCAL_ROPE_THETA: f64 = 10_000.0;
/// Gemma 3 has one global layer after every five local ones.
pub(super) const GEMMA3_SLIDING_WINDOW_PATTERN: usize = 6;
/// Gemma 2 alternates: sliding, global, sliding, ...
pub(super) const GEMMA2_SLIDING_WINDOW_PATTERN: usize = 2;

/// The config of the model in `file`, as Ember parses it.
pub fn gemma_config(file: &GgufFile) -> Result<GemmaConfig> {
    GemmaConfig::parse(&hf_config(file, None)?.to_string(), file.path())
}

/// `config.json` for the model in `file`; `torch_dtype` names the dtype its weights are written in.
pub fn hf_config(file: &GgufFile, torch_dtype: Option<&str>) -> Result<Value> {
    let arch = Architecture::of(file)?;
    let key = |name: &str| format!("{}.{name}", arch.name());
    let hidden = file.required_usize(&key("embedding_length"))?;
    let layers = file.required_usize(&key("block_count"))?;
    let heads = file.required_usize(&key("attention.head_count"))?;
    let kv_heads = file.get_usize(&key("attention.head_count_kv"))?.unwrap_or(heads);
    if heads == 0 {
        return Err(file.key_error(&key("attention.head_count"), "must be greater than zero"));
    }
    // llama.cpp's default when the key is absent.
    let head_dim = file.get_usize(&key("attention.key_length"))?.unwrap_or(hidden / heads);
    if let Some(value_dim) = file.get_usize(&key("attention.value_length"))?
        && value_dim != head_dim
    {
        return Err(file.key_error(
            &key("attention.value_length"),
            format!("{value_dim} differs from key_length {head_dim}; Gemma's keys and values have one head size"),
        ));
    }
    let embedding = file
        .tensor("token_embd.weight")
        .ok_or_else(|| file.key_error("token_embd.weight", "the file has no token embedding tensor"))?;
    let (model_type, class) = match arch {
        Architecture::Gemma => ("gemma", "GemmaForCausalLM"),
        Architecture::Gemma2 => ("gemma2", "Gemma2ForCausalLM"),
        Architecture::Gemma3 => ("gemma3_text", "Gemma3ForCausalLM"),
    };
    let mut config = json!({
        "architectures": [class],
        "model_type": model_type,
        "vocab_size": embedding.shape()[0],
        "hidden_size": hidden,
        "intermediate_size": file.required_usize(&key("feed_forward_length"))?,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": file.get_f64(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-6),
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": file.required_usize(&key("context_length"))?,
        "rope_theta": file.get_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0),
        "attention_bias": false,
        "attention_dropout": 0.0,
        "tie_word_embeddings": file.tensor("output.weight").is_none(),
        "bos_token_id": file.get_usize("tokenizer.ggml.bos_token_id")?,
        "eos_token_id": file.get_usize("tokenizer.ggml.eos_token_id")?,
        "pad_token_id": file.get_usize("tokenizer.ggml.padding_token_id")?,
    });
    let map = config.as_object_mut().expect("a JSON object literal");
    if let Some(dtype) = torch_dtype {
        map.insert("torch_dtype".into(), dtype.into());
    }
    let query_pre_attn_scalar = arch.query_pre_attn_scalar(layers, hidden, heads, head_dim);
    let scaling = rope_scaling(file, arch)?;
    match arch {
        Architecture::Gemma | Architecture::Gemma2 if !scaling.is_null() => {
            map.insert("rope_scaling".into(), scaling.clone());
        }
        _ => {}
    }
    match arch {
        Architecture::Gemma => {}
        Architecture::Gemma2 => {
            let sliding_window = file.get_usize(&key("attention.sliding_window"))?.unwrap_or(4096);
            map.extend([
                ("query_pre_attn_scalar".into(), query_pre_attn_scalar.into()),
                ("sliding_window".into(), sliding_window.into()),
                (
                    "layer_types".into(),
                    layer_types(layers, GEMMA2_SLIDING_WINDOW_PATTERN).into(),
                ),
                (
                    "attn_logit_softcapping".into(),
                    file.get_f64(&key("attn_logit_softcapping"))?.unwrap_or(50.0).into(),
                ),
                (
                    "final_logit_softcapping".into(),
                    file.get_f64(&key("final_logit_softcapping"))?.unwrap_or(30.0).into(),
                ),
            ]);
        }
        Architecture::Gemma3 => {
            // Without a window (possible since llama.cpp b6000) every layer attends globally.
            let window = file.get_usize(&key("attention.sliding_window"))?.filter(|&w| w > 0);
            let (sliding_window, pattern) = match window {
                Some(w) => (w, GEMMA3_SLIDING_WINDOW_PATTERN),
                None => (file.required_usize(&key("context_length"))?, 1),
            };
            map.extend([
                ("query_pre_attn_scalar".into(), query_pre_attn_scalar.into()),
                ("sliding_window".into(), sliding_window.into()),
                ("_sliding_window_pattern".into(), pattern.into()),
                ("layer_types".into(), layer_types(layers, pattern).into()),
                ("rope_local_base_freq".into(), GEMMA3_LOCAL_ROPE_THETA.into()),
                ("rope_scaling".into(), scaling),
                ("attn_logit_softcapping".into(), Value::Null),
                (
                    "final_logit_softcapping".into(),
                    file.get_f64(&key("final_logit_softcapping"))?.into(),
                ),
                ("use_bidirectional_attention".into(), false.into()),
            ]);
        }
    }
    Ok(config)
}

/// Every `pattern`-th layer global, the others sliding (transformers' rule for both Gemma 2,
/// pattern 2, and Gemma 3); pattern 1 makes every layer global.
fn layer_types(layers: usize, pattern: usize) -> Vec<&'static str> {
    (0..layers)
        .map(|i| match is_global_layer(i, pattern) {
            true => "full_attention",
            false => "sliding_attention",
        })
        .collect()
}

/// Whether layer `i` attends globally under a sliding-window `pattern` (llama.cpp's
/// `set_swa_pattern`).
pub(super) fn is_global_layer(i: usize, pattern: usize) -> bool {
    (i + 1).is_multiple_of(pattern)
}

/// Linear RoPE scaling of the global layers, as llama.cpp reads it: a factor under
/// `rope.scaling.factor` (or the older `rope.scale_linear`), linear unless a type says otherwise.
fn rope_scaling(file: &GgufFile, arch: Architecture) -> Result<Value> {
    let key = |name: &str| format!("{}.{name}", arch.name());
    let factor = match file.get_f64(&key("rope.scaling.factor"))? {
        Some(f) => Some(f),
        None => file.get_f64(&key("rope.scale_linear"))?,
    };
    let kind = key("rope.scaling.type");
    match (file.get_str(&kind)?, factor) {
        (Some("linear") | None, Some(factor)) if factor != 0.0 && factor != 1.0 => {
            Ok(json!({"rope_type": "linear", "factor": factor}))
        }
        (Some("linear" | "none") | None, _) => Ok(Value::Null),
        (Some(other), _) => Err(file.key_error(
            &kind,
            format!("RoPE scaling `{other}` is not supported; expected linear or none"),
        )),
    }
}
