//! The model shapes benchmarks run: real Gemma configurations (real 256k vocabulary),
//! the same ones `shared/bench/hf_peft_bench.py` builds for transformers.

use std::path::Path;

use anyhow::{Result, bail};
use ember_model::GemmaConfig;

/// `(name, config.json)` of each built-in shape.
const SHAPES: &[(&str, &str)] = &[
    (
        "gemma-2b",
        r#"{"model_type": "gemma", "vocab_size": 256000, "hidden_size": 2048, "intermediate_size": 16384,
            "num_hidden_layers": 18, "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256,
            "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 8192, "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0}"#,
    ),
    (
        "gemma2-2b",
        r#"{"model_type": "gemma2", "vocab_size": 256000, "hidden_size": 2304, "intermediate_size": 9216,
            "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
            "hidden_activation": "gelu_pytorch_tanh", "sliding_window": 4096, "query_pre_attn_scalar": 256,
            "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0}"#,
    ),
    (
        "gemma2-9b",
        r#"{"model_type": "gemma2", "vocab_size": 256000, "hidden_size": 3584, "intermediate_size": 14336,
            "num_hidden_layers": 42, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256,
            "hidden_activation": "gelu_pytorch_tanh", "sliding_window": 4096, "query_pre_attn_scalar": 256,
            "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0}"#,
    ),
    (
        "gemma3-270m",
        r#"{"model_type": "gemma3_text", "vocab_size": 262144, "hidden_size": 640, "intermediate_size": 2048,
            "num_hidden_layers": 18, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
            "hidden_activation": "gelu_pytorch_tanh", "sliding_window": 512, "sliding_window_pattern": 6,
            "query_pre_attn_scalar": 256, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
            "max_position_embeddings": 32768, "rms_norm_eps": 1e-6}"#,
    ),
    (
        "gemma-7b",
        r#"{"model_type": "gemma", "vocab_size": 256000, "hidden_size": 3072, "intermediate_size": 24576,
            "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 256,
            "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 8192, "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0}"#,
    ),
];

/// A built-in shape by name, or the `config.json` of a model directory.
pub fn resolve(arch: &str) -> Result<GemmaConfig> {
    if let Some((name, json)) = SHAPES.iter().find(|(name, _)| *name == arch) {
        return Ok(GemmaConfig::parse(json, Path::new(name))?);
    }
    let dir = Path::new(arch);
    if dir.join("config.json").is_file() {
        return Ok(GemmaConfig::from_file(dir.join("config.json"))?);
    }
    let names: Vec<&str> = SHAPES.iter().map(|(n, _)| *n).collect();
    bail!(
        "unknown shape `{arch}`: use one of {} or a model directory with a config.json",
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_parses_with_the_expected_size() {
        let billions = |name: &str| resolve(name).unwrap().parameter_count() as f64 / 1e9;
        assert!((billions("gemma-2b") - 2.51).abs() < 0.01, "{}", billions("gemma-2b"));
        assert!((billions("gemma2-2b") - 2.61).abs() < 0.01, "{}", billions("gemma2-2b"));
        assert!((billions("gemma-7b") - 8.54).abs() < 0.01, "{}", billions("gemma-7b"));
        assert!((billions("gemma2-9b") - 9.24).abs() < 0.01, "{}", billions("gemma2-9b"));
        assert!(
            (billions("gemma3-270m") - 0.268).abs() < 0.002,
            "{}",
            billions("gemma3-270m")
        );
        assert!(resolve("gemma-99b").is_err());
    }
}
