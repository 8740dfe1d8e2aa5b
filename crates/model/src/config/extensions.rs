//! What Gemma 3n and Gemma 4 add to the decoder's config: per-layer embeddings, AltUp and
//! Laurel (3n), shared keys and values, per-layer MLP widths, sparse activations (3n), wider
//! full-attention heads, keys as values and a mixture of experts (4).

use serde_json::Value;

use super::{Family, Fields, LayerType};
use crate::error::Result;

/// Per-layer embeddings: a second embedding of every token, `hidden_size` wide for each layer,
/// mixed with a projection of the main embedding and fed into each layer's residual stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerLayerInputs {
    /// One layer's width (`hidden_size_per_layer_input`).
    pub hidden_size: usize,
    /// Rows of `embed_tokens_per_layer` (`vocab_size_per_layer_input`); Gemma 3n looks other ids
    /// up as id 0.
    pub vocab_size: usize,
}

/// Gemma 3n's AltUp: the residual stream is `num_inputs` versions of the hidden state; each
/// layer predicts them all from the active one, runs on the active one and corrects the rest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AltUp {
    pub num_inputs: usize,
    pub active_idx: usize,
    /// In training, transformers clamps the coefficient weights to ±this (`altup_coef_clip`).
    pub coef_clip: Option<f64>,
    /// Whether the active output is scaled by `correct_output_scale` before the per-layer input.
    pub correct_scale: bool,
}

/// Gemma 4's mixture of experts: each token's `top_k` of `num_experts` gated MLPs, beside the
/// layer's dense MLP.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moe {
    pub num_experts: usize,
    pub top_k: usize,
    /// Each expert's intermediate size (`moe_intermediate_size`).
    pub intermediate_size: usize,
}

/// The extensions of one config, before they are checked against each other.
pub(super) struct Extensions {
    pub full_head_dim: usize,
    pub full_key_value_heads: usize,
    pub attention_k_eq_v: bool,
    pub num_kv_shared_layers: usize,
    pub per_layer_inputs: Option<PerLayerInputs>,
    pub altup: Option<AltUp>,
    pub laurel_rank: Option<usize>,
    pub activation_sparsity: Vec<f64>,
    pub moe: Option<Moe>,
    pub layer_intermediate_sizes: Vec<usize>,
}

impl Fields<'_> {
    /// The `intermediate_size` key: one number, or (Gemma 3n) one per layer.
    pub(super) fn intermediate_sizes(&self, family: Family, num_layers: usize) -> Result<Vec<usize>> {
        let key = "intermediate_size";
        match self.get(key) {
            Some(Value::Array(items)) if family == Family::Gemma3n => {
                if items.len() != num_layers {
                    return Err(self.error(
                        key,
                        format!("lists {} sizes but num_hidden_layers is {num_layers}", items.len()),
                    ));
                }
                items
                    .iter()
                    .map(|v| {
                        v.as_u64()
                            .map(|n| n as usize)
                            .ok_or_else(|| self.error(key, format!("expected integers, found {v}")))
                    })
                    .collect()
            }
            _ => Ok(vec![self.required_usize(key)?; num_layers]),
        }
    }

    /// Everything Gemma 3n and 4 add; the earlier generations get the values that change nothing.
    pub(super) fn extensions(
        &self,
        family: Family,
        layer_types: &[LayerType],
        head_dim: usize,
        num_key_value_heads: usize,
        intermediate_sizes: Vec<usize>,
    ) -> Result<Extensions> {
        let num_layers = layer_types.len();
        let mut ext = Extensions {
            full_head_dim: head_dim,
            full_key_value_heads: num_key_value_heads,
            attention_k_eq_v: false,
            num_kv_shared_layers: 0,
            per_layer_inputs: None,
            altup: None,
            laurel_rank: None,
            activation_sparsity: vec![0.0; num_layers],
            moe: None,
            layer_intermediate_sizes: intermediate_sizes,
        };
        if !matches!(family, Family::Gemma3n | Family::Gemma4) {
            return Ok(ext);
        }
        // Absent keys take transformers' class defaults; Gemma 4 "unified" has no per-layer
        // embeddings or experts at all.
        let gemma3n = family == Family::Gemma3n;
        let unified = self.is_gemma4_unified()?;
        ext.num_kv_shared_layers = self
            .usize("num_kv_shared_layers")?
            .unwrap_or(if gemma3n { 15 } else { 0 });
        let per_layer_width = self.usize("hidden_size_per_layer_input")?;
        let per_layer_width = match self.map.contains_key("hidden_size_per_layer_input") {
            true => per_layer_width.unwrap_or(0),
            false if unified => 0,
            false => 256,
        };
        if per_layer_width > 0 {
            ext.per_layer_inputs = Some(PerLayerInputs {
                hidden_size: per_layer_width,
                vocab_size: self.usize("vocab_size_per_layer_input")?.unwrap_or(262_144),
            });
        }
        if gemma3n {
            let altup = AltUp {
                num_inputs: self.usize("altup_num_inputs")?.unwrap_or(4),
                active_idx: self.usize("altup_active_idx")?.unwrap_or(0),
                coef_clip: match self.map.contains_key("altup_coef_clip") {
                    true => self.f64("altup_coef_clip")?,
                    false => Some(120.0),
                },
                correct_scale: self.bool("altup_correct_scale")?.unwrap_or(true),
            };
            if altup.num_inputs < 2 {
                return Err(self.error("altup_num_inputs", "must be at least 2"));
            }
            if altup.active_idx >= altup.num_inputs {
                return Err(self.error(
                    "altup_active_idx",
                    format!("{} is not one of the {} inputs", altup.active_idx, altup.num_inputs),
                ));
            }
            ext.altup = Some(altup);
            ext.laurel_rank = Some(self.usize("laurel_rank")?.unwrap_or(64));
            ext.activation_sparsity = self.activation_sparsity(num_layers)?;
            if ext.per_layer_inputs.is_none() {
                return Err(self.error(
                    "hidden_size_per_layer_input",
                    "Gemma 3n layers always take a per-layer input; expected a positive size",
                ));
            }
        } else {
            self.head_overrides(layer_types, &mut ext)?;
            ext.moe = self.moe()?;
        }
        self.check_kv_sharing(layer_types, ext.num_kv_shared_layers)?;
        if !gemma3n && self.bool("use_double_wide_mlp")?.unwrap_or(false) {
            let first_shared = num_layers - ext.num_kv_shared_layers;
            for size in &mut ext.layer_intermediate_sizes[first_shared..] {
                *size *= 2;
            }
        }
        Ok(ext)
    }

    /// Whether this is Gemma 4 "unified"'s text config, whose class lacks some of Gemma 4's keys.
    pub(super) fn is_gemma4_unified(&self) -> Result<bool> {
        Ok(self.str("model_type")? == Some("gemma4_unified_text"))
    }

    /// `activation_sparsity_pattern`: one share per layer; by default the first 10 layers of a
    /// model of more than 10 are 95% sparse, as transformers has it.
    fn activation_sparsity(&self, num_layers: usize) -> Result<Vec<f64>> {
        let key = "activation_sparsity_pattern";
        let Some(value) = self.get(key) else {
            let sparse = if num_layers > 10 { 10 } else { 0 };
            return Ok((0..num_layers).map(|i| if i < sparse { 0.95 } else { 0.0 }).collect());
        };
        let items = value
            .as_array()
            .ok_or_else(|| self.error(key, format!("expected one value per layer, found {value}")))?;
        if items.len() != num_layers {
            return Err(self.error(
                key,
                format!("has {} values but num_hidden_layers is {num_layers}", items.len()),
            ));
        }
        items
            .iter()
            .map(|v| match v.as_f64() {
                Some(p) if (0.0..1.0).contains(&p) => Ok(p),
                _ => Err(self.error(key, format!("expected shares in [0, 1), found {v}"))),
            })
            .collect()
    }

    /// Gemma 4's full-attention heads: `per_layer_config` (transformers 5.x's per-layer
    /// overrides) or, before it, `global_head_dim` and, with `attention_k_eq_v`,
    /// `num_global_key_value_heads`.
    fn head_overrides(&self, layer_types: &[LayerType], ext: &mut Extensions) -> Result<()> {
        ext.attention_k_eq_v = self.bool("attention_k_eq_v")?.unwrap_or(false);
        let Some(overrides) = self.get("per_layer_config") else {
            ext.full_head_dim = self.usize("global_head_dim")?.unwrap_or(512);
            if ext.attention_k_eq_v
                && let Some(heads) = self.usize("num_global_key_value_heads")?
            {
                ext.full_key_value_heads = heads;
            }
            return self.check_heads("global_head_dim", ext.full_head_dim, ext.full_key_value_heads);
        };
        let key = "per_layer_config";
        let overrides = overrides
            .as_object()
            .ok_or_else(|| self.error(key, "expected an object of layer index → settings"))?;
        // Ember shares RoPE tables and caches by layer type, so each type's layers must agree.
        let mut per_type: [Option<(usize, usize)>; 2] = [None, None];
        let defaults = (ext.full_head_dim, ext.full_key_value_heads);
        for (index, &layer_type) in layer_types.iter().enumerate() {
            let mut settings = defaults;
            if let Some(entry) = overrides.get(&index.to_string()) {
                let entry = entry
                    .as_object()
                    .ok_or_else(|| self.error(&format!("{key}.{index}"), "expected an object"))?;
                for (name, value) in entry {
                    let number = value.as_u64().map(|n| n as usize);
                    match (name.as_str(), number) {
                        ("head_dim", Some(n)) => settings.0 = n,
                        ("num_key_value_heads", Some(n)) => settings.1 = n,
                        ("head_dim" | "num_key_value_heads", None) => {
                            return Err(self.error(
                                &format!("{key}.{index}.{name}"),
                                format!("expected a positive integer, found {value}"),
                            ));
                        }
                        _ => {
                            return Err(self.error(
                                &format!("{key}.{index}.{name}"),
                                "Ember applies per-layer head_dim and num_key_value_heads only",
                            ));
                        }
                    }
                }
            }
            let slot = &mut per_type[usize::from(layer_type == LayerType::Full)];
            match slot {
                Some(seen) if *seen != settings => {
                    return Err(self.error(
                        &format!("{key}.{index}"),
                        "layers of one type must have the same head_dim and num_key_value_heads",
                    ));
                }
                _ => *slot = Some(settings),
            }
        }
        if let Some((dim, heads)) = per_type[0]
            && (dim, heads) != defaults
        {
            return Err(self.error(
                key,
                "overrides sliding-attention layers; Ember applies them to full-attention layers only",
            ));
        }
        if let Some((dim, heads)) = per_type[1] {
            (ext.full_head_dim, ext.full_key_value_heads) = (dim, heads);
        }
        self.check_heads(key, ext.full_head_dim, ext.full_key_value_heads)
    }

    fn check_heads(&self, key: &str, head_dim: usize, kv_heads: usize) -> Result<()> {
        let heads = self.usize("num_attention_heads")?.unwrap_or(0);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(self.error(key, format!("head_dim {head_dim} must be even and positive")));
        }
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(self.error(
                key,
                format!("{kv_heads} key/value heads do not divide num_attention_heads = {heads}"),
            ));
        }
        Ok(())
    }

    fn moe(&self) -> Result<Option<Moe>> {
        if !self.bool("enable_moe_block")?.unwrap_or(false) {
            return Ok(None);
        }
        let required = |key: &str| -> Result<usize> {
            match self.usize(key)? {
                Some(n) if n > 0 => Ok(n),
                _ => Err(self.error(key, "enable_moe_block needs a positive value")),
            }
        };
        let moe = Moe {
            num_experts: required("num_experts")?,
            top_k: required("top_k_experts")?,
            intermediate_size: required("moe_intermediate_size")?,
        };
        if moe.top_k > moe.num_experts {
            return Err(self.error(
                "top_k_experts",
                format!("{} is more than num_experts = {}", moe.top_k, moe.num_experts),
            ));
        }
        Ok(Some(moe))
    }

    /// The shared layers must each find an earlier layer of their type to share with.
    fn check_kv_sharing(&self, layer_types: &[LayerType], shared: usize) -> Result<()> {
        let key = "num_kv_shared_layers";
        let num_layers = layer_types.len();
        if shared >= num_layers && shared > 0 {
            return Err(self.error(
                key,
                format!("{shared} of {num_layers} layers leaves none to compute keys and values"),
            ));
        }
        let first_shared = num_layers - shared;
        for (index, layer_type) in layer_types.iter().enumerate().skip(first_shared) {
            if !layer_types[..first_shared].contains(layer_type) {
                return Err(self.error(
                    key,
                    format!(
                        "layer {index} ({layer_type:?}) has no earlier layer of its type to share keys and values with"
                    ),
                ));
            }
        }
        Ok(())
    }
}
