//! Loading in 4 bits, as transformers' `BitsAndBytesConfig(load_in_4bit=True, ...)` does:
//! which projections are quantized and how.

use regex::Regex;

use super::four_bit::QuantType;

/// The 4-bit settings, named as transformers' `BitsAndBytesConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct FourBitConfig {
    /// `bnb_4bit_quant_type`.
    pub quant_type: QuantType,
    /// `bnb_4bit_use_double_quant`.
    pub double_quant: bool,
    /// `llm_int8_skip_modules`: modules kept in the run dtype. `None` keeps transformers'
    /// default, the output embedding (`lm_head`); a list replaces it, as in transformers.
    pub skip_modules: Option<Vec<String>>,
}

impl Default for FourBitConfig {
    /// QLoRA's recipe (and Unsloth's `load_in_4bit=True`): NF4 with double quantization.
    fn default() -> Self {
        Self {
            quant_type: QuantType::Nf4,
            double_quant: true,
            skip_modules: None,
        }
    }
}

/// Blocks of 64 values share an absmax, as transformers quantizes.
pub const BLOCKSIZE: usize = 64;

impl FourBitConfig {
    /// Whether the projection `module` (`model.layers.0.mlp.down_proj`) is quantized:
    /// transformers' `should_convert_module`, which skips a module when a pattern matches its
    /// name from the start up to a module boundary (`layers.1` skips `layers.1.mlp`, not
    /// `layers.11.mlp`), as a regex with the same boundary, or as a suffix.
    pub fn quantizes(&self, module: &str) -> bool {
        let defaults = ["lm_head".to_string()];
        let patterns = self.skip_modules.as_deref().unwrap_or(&defaults);
        !patterns.iter().any(|p| matches(p, module))
    }
}

impl FourBitConfig {
    /// The first skip pattern that is not a valid regular expression, and why.
    pub fn invalid_pattern(&self) -> Option<(String, String)> {
        self.skip_modules
            .iter()
            .flatten()
            .find_map(|p| Regex::new(p).err().map(|e| (p.clone(), e.to_string())))
    }
}

fn matches(pattern: &str, module: &str) -> bool {
    if module.ends_with(pattern) {
        return true;
    }
    // The boundary: a `.` or the end after the match, or a match that ends with a `.`.
    let followed = Regex::new(&format!(r"^(?:{pattern})(?:\.|$)")).is_ok_and(|r| r.is_match(module));
    let ends_with_dot =
        Regex::new(&format!("^(?:{pattern})")).is_ok_and(|r| r.find(module).is_some_and(|m| m.as_str().ends_with('.')));
    followed || ends_with_dot
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skipping(patterns: &[&str]) -> FourBitConfig {
        FourBitConfig {
            skip_modules: Some(patterns.iter().map(|p| p.to_string()).collect()),
            ..FourBitConfig::default()
        }
    }

    #[test]
    fn the_default_keeps_only_the_output_embedding() {
        let config = FourBitConfig::default();
        assert!(!config.quantizes("lm_head"));
        assert!(config.quantizes("model.layers.0.mlp.down_proj"));
        assert!(config.quantizes("model.layers.0.self_attn.q_proj"));
    }

    #[test]
    fn patterns_match_like_transformers() {
        let config = skipping(&["model.layers.1", "mlp.gate", "o_proj", r"model\.layers\.2.*"]);
        assert!(!config.quantizes("model.layers.1.mlp.up_proj"), "prefix to a boundary");
        assert!(config.quantizes("model.layers.11.mlp.up_proj"), "not past a boundary");
        assert!(
            config.quantizes("model.layers.3.mlp.gate_proj"),
            "mlp.gate is not mlp.gate_proj"
        );
        assert!(!config.quantizes("model.layers.3.self_attn.o_proj"), "suffix");
        assert!(!config.quantizes("model.layers.25.mlp.down_proj"), "regex");
        // A list replaces the default: the head is quantized unless named.
        assert!(config.quantizes("lm_head"));
    }
}
