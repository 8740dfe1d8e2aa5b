//! llama.cpp's tensor names and their Hugging Face counterparts (gguf-py's `tensor_mapping.py`
//! for the Gemma architectures), and which tensors llama.cpp stores shifted by one.

use super::arch::Architecture;

/// The Hugging Face name of the llama.cpp tensor `name`, if this architecture has one.
pub fn hf_name(arch: Architecture, name: &str) -> Option<String> {
    let base = name.strip_suffix(".weight")?;
    match base {
        "token_embd" => return Some("model.embed_tokens.weight".into()),
        "output_norm" => return Some("model.norm.weight".into()),
        // Only in files whose head is not tied to the embedding.
        "output" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let (layer, module) = base.strip_prefix("blk.")?.split_once('.')?;
    // `blk.01` would alias `blk.1`: only llama.cpp's own spelling is accepted.
    let index: usize = layer.parse().ok().filter(|i: &usize| i.to_string() == layer)?;
    let sandwich = arch != Architecture::Gemma;
    let hf = match module {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" if arch == Architecture::Gemma3 => "self_attn.q_norm",
        "attn_k_norm" if arch == Architecture::Gemma3 => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        // Gemma 1 has one norm before the MLP, which transformers calls post_attention_layernorm;
        // Gemma 2 and 3 add norms after attention and after the MLP.
        "ffn_norm" if !sandwich => "post_attention_layernorm",
        "ffn_norm" => "pre_feedforward_layernorm",
        "post_attention_norm" if sandwich => "post_attention_layernorm",
        "post_ffw_norm" if sandwich => "post_feedforward_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{index}.{hf}.weight"))
}

/// The llama.cpp name of the Hugging Face tensor `hf` (the inverse of [`hf_name`]), if this
/// architecture has one.
pub fn gguf_name(arch: Architecture, hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let (layer, module) = hf.strip_prefix("model.layers.")?.split_once('.')?;
    let module = module.strip_suffix(".weight")?;
    let sandwich = arch != Architecture::Gemma;
    let gguf = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" if arch == Architecture::Gemma3 => "attn_q_norm",
        "self_attn.k_norm" if arch == Architecture::Gemma3 => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" if !sandwich => "ffn_norm",
        "pre_feedforward_layernorm" if sandwich => "ffn_norm",
        "post_attention_layernorm" => "post_attention_norm",
        "post_feedforward_layernorm" if sandwich => "post_ffw_norm",
        _ => return None,
    };
    let name = format!("blk.{layer}.{gguf}.weight");
    // Only names that map back: a malformed layer index has no counterpart.
    (hf_name(arch, &name).as_deref() == Some(hf)).then_some(name)
}

/// Gemma's RMSNorm multiplies by `1 + w`; llama.cpp's multiplies by `w`, so
/// `convert_hf_to_gguf.py` adds one to every Hugging Face tensor named `*norm.weight`, and
/// importing subtracts it again.
pub fn is_shifted_norm(hf_name: &str) -> bool {
    hf_name.ends_with("norm.weight")
}

#[cfg(test)]
mod tests {
    use super::*;
    use Architecture::*;

    #[test]
    fn gemma3_names_map_as_gguf_py_maps_them() {
        for (gguf, hf) in [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output_norm.weight", "model.norm.weight"),
            ("output.weight", "lm_head.weight"),
            ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
            ("blk.3.attn_k.weight", "model.layers.3.self_attn.k_proj.weight"),
            ("blk.3.attn_v.weight", "model.layers.3.self_attn.v_proj.weight"),
            ("blk.17.attn_output.weight", "model.layers.17.self_attn.o_proj.weight"),
            ("blk.2.attn_q_norm.weight", "model.layers.2.self_attn.q_norm.weight"),
            ("blk.2.attn_k_norm.weight", "model.layers.2.self_attn.k_norm.weight"),
            ("blk.4.ffn_gate.weight", "model.layers.4.mlp.gate_proj.weight"),
            ("blk.4.ffn_up.weight", "model.layers.4.mlp.up_proj.weight"),
            ("blk.4.ffn_down.weight", "model.layers.4.mlp.down_proj.weight"),
            ("blk.5.attn_norm.weight", "model.layers.5.input_layernorm.weight"),
            (
                "blk.5.post_attention_norm.weight",
                "model.layers.5.post_attention_layernorm.weight",
            ),
            (
                "blk.5.ffn_norm.weight",
                "model.layers.5.pre_feedforward_layernorm.weight",
            ),
            (
                "blk.5.post_ffw_norm.weight",
                "model.layers.5.post_feedforward_layernorm.weight",
            ),
        ] {
            assert_eq!(hf_name(Gemma3, gguf).as_deref(), Some(hf), "{gguf}");
        }
    }

    #[test]
    fn gemma1_has_one_norm_before_the_mlp_and_no_sandwich_or_qk_norms() {
        assert_eq!(
            hf_name(Gemma, "blk.1.ffn_norm.weight").as_deref(),
            Some("model.layers.1.post_attention_layernorm.weight")
        );
        assert_eq!(
            hf_name(Gemma2, "blk.1.ffn_norm.weight").as_deref(),
            Some("model.layers.1.pre_feedforward_layernorm.weight")
        );
        for name in ["blk.1.post_ffw_norm.weight", "blk.1.post_attention_norm.weight"] {
            assert_eq!(hf_name(Gemma, name), None, "{name}");
        }
        assert_eq!(hf_name(Gemma2, "blk.1.attn_q_norm.weight"), None);
    }

    #[test]
    fn every_name_maps_back_to_itself_in_every_architecture() {
        let modules = [
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "attn_q_norm",
            "attn_k_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
            "attn_norm",
            "ffn_norm",
            "post_attention_norm",
            "post_ffw_norm",
        ];
        for arch in [Gemma, Gemma2, Gemma3] {
            let mut names: Vec<String> = modules.iter().map(|m| format!("blk.12.{m}.weight")).collect();
            names.extend(["token_embd.weight", "output_norm.weight", "output.weight"].map(String::from));
            let mut mapped = 0;
            for name in names {
                if let Some(hf) = hf_name(arch, &name) {
                    assert_eq!(gguf_name(arch, &hf).as_deref(), Some(name.as_str()), "{arch:?} {hf}");
                    mapped += 1;
                }
            }
            assert_eq!(
                mapped,
                if arch == Gemma3 {
                    16
                } else if arch == Gemma2 {
                    14
                } else {
                    12
                }
            );
        }
        assert_eq!(gguf_name(Gemma3, "model.layers.01.mlp.up_proj.weight"), None);
        assert_eq!(gguf_name(Gemma, "model.layers.1.self_attn.q_norm.weight"), None);
    }

    #[test]
    fn foreign_or_malformed_names_have_no_counterpart() {
        for name in [
            "rope_freqs.weight",
            "blk.1.attn_q.bias",
            "blk.x.attn_q.weight",
            "blk.01.attn_q.weight",
        ] {
            assert_eq!(hf_name(Gemma3, name), None, "{name}");
        }
    }

    #[test]
    fn every_norm_and_only_norms_are_shifted() {
        let norms = [
            "attn_norm",
            "post_attention_norm",
            "ffn_norm",
            "post_ffw_norm",
            "attn_q_norm",
            "attn_k_norm",
        ];
        for module in norms {
            assert!(is_shifted_norm(
                &hf_name(Gemma3, &format!("blk.0.{module}.weight")).unwrap()
            ));
        }
        assert!(is_shifted_norm("model.norm.weight"));
        for module in ["attn_q", "attn_output", "ffn_down"] {
            assert!(!is_shifted_norm(
                &hf_name(Gemma3, &format!("blk.0.{module}.weight")).unwrap()
            ));
        }
        assert!(!is_shifted_norm("model.embed_tokens.weight"));
    }
}
