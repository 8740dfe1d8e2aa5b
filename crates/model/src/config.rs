//! `config.json` of a Gemma checkpoint, read as transformers 4.x and 5.x write it.
//!
//! Every key that changes the computation is either used or refused; keys that only
//! describe the file (`architectures`, `transformers_version`, …) are accepted; any other
//! key is reported with a warning, so nothing is dropped silently. A multimodal config
//! (Gemma 3n, Gemma 4) is read for its `text_config` ([`multimodal`]).

mod extensions;
mod multimodal;

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{ModelError, Result};

pub use extensions::{AltUp, Moe, PerLayerInputs};
pub(crate) use multimodal::standalone_text_config;

/// The Gemma generations Ember runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Gemma 1 / 1.1 (`model_type: gemma`).
    Gemma,
    /// Gemma 2 (`gemma2`): sandwich norms, soft-capping, alternating sliding window.
    Gemma2,
    /// Gemma 3 text (`gemma3_text`): q/k norms, 5:1 local/global layers, two RoPE bases.
    Gemma3,
    /// Gemma 3n text (`gemma3n_text`): AltUp, Laurel, per-layer embeddings, sparse
    /// activations, layers that share keys and values.
    Gemma3n,
    /// Gemma 4 text (`gemma4_text`, `gemma4_unified_text`): per-layer embeddings, shared
    /// keys and values, wider full-attention heads with proportional RoPE, keys as values,
    /// a mixture of experts.
    Gemma4,
}

/// Which attention a decoder layer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerType {
    Full,
    Sliding,
}

/// The gate activation of the MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_pytorch_tanh`: what every released Gemma uses.
    GeluTanh,
    /// Exact (erf) GELU, only when `hidden_activation` asks for `gelu` explicitly.
    GeluErf,
}

/// Rotary embedding of one layer type: `inv_freq = 1 / theta^(2i/d) / factor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    pub theta: f64,
    /// Linear position scaling (`rope_type: linear`); 1.0 for `default`.
    pub factor: f64,
    /// The share of the `head_dim / 2` frequencies that rotate (`rope_type: proportional`,
    /// Gemma 4's full-attention layers); the others are 0, leaving their dimensions as they are.
    pub partial_rotary_factor: f64,
}

impl Rope {
    /// Plain RoPE with base `theta`.
    pub fn new(theta: f64) -> Self {
        Self {
            theta,
            factor: 1.0,
            partial_rotary_factor: 1.0,
        }
    }
}

/// The architecture of a Gemma checkpoint, normalised across config generations.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmaConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub activation: Activation,
    pub max_position_embeddings: usize,
    /// One entry per decoder layer.
    pub layer_types: Vec<LayerType>,
    pub sliding_window: Option<usize>,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    /// Attention scores are multiplied by `query_pre_attn_scalar^-0.5` (`head_dim^-0.5` for Gemma 1).
    pub query_pre_attn_scalar: f64,
    pub rope_full: Rope,
    pub rope_sliding: Rope,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// The dtype the checkpoint was saved in (`torch_dtype`/`dtype`), if stated.
    pub torch_dtype: Option<String>,
    /// The text decoder's module path in the checkpoint: `model`, or `model.language_model` in
    /// a multimodal one, whose other towers Ember does not load.
    pub module_prefix: String,
    /// The MLP's intermediate size of each layer: `intermediate_size` everywhere before Gemma 3n,
    /// which may list one per layer; Gemma 4 doubles it on KV-sharing layers
    /// (`use_double_wide_mlp`).
    pub layer_intermediate_sizes: Vec<usize>,
    /// Head size and key/value heads of full-attention layers (Gemma 4's `global_head_dim`,
    /// `num_global_key_value_heads`); `head_dim` and `num_key_value_heads` are the sliding
    /// layers'. Equal to those before Gemma 4.
    pub full_head_dim: usize,
    pub full_key_value_heads: usize,
    /// Full-attention layers take their values from the key projection (Gemma 4's
    /// `attention_k_eq_v`): they have no `v_proj`.
    pub attention_k_eq_v: bool,
    /// The last `num_kv_shared_layers` layers compute no keys or values: each uses those of the
    /// last earlier layer of its type (Gemma 3n, Gemma 4).
    pub num_kv_shared_layers: usize,
    /// Per-layer embeddings (Gemma 3n, Gemma 4's E models).
    pub per_layer_inputs: Option<PerLayerInputs>,
    /// Gemma 3n's alternating updates of several copies of the residual stream.
    pub altup: Option<AltUp>,
    /// Gemma 3n's learned augmented residual: a rank-`laurel_rank` side path of attention.
    pub laurel_rank: Option<usize>,
    /// Per layer: the share of the MLP's gate activations zeroed by Gemma 3n's Gaussian top-k
    /// (0 = dense).
    pub activation_sparsity: Vec<f64>,
    /// Gemma 4's mixture of experts beside each layer's dense MLP.
    pub moe: Option<Moe>,
}

/// Keys every transformers config may carry that do not change the forward pass.
const DESCRIPTIVE_KEYS: &[&str] = &[
    "_name_or_path",
    "architectures",
    "transformers_version",
    "initializer_range",
    "use_cache",
    "cache_implementation",
    "id2label",
    "label2id",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "problem_type",
    "is_encoder_decoder",
    "is_decoder",
    "add_cross_attention",
    "chunk_size_feed_forward",
    "torchscript",
    "tf_legacy_loss",
    "use_bfloat16",
    "pruned_heads",
    "tie_encoder_decoder",
    "tokenizer_class",
    "prefix",
    "finetuning_task",
    "task_specific_params",
    "cross_attention_hidden_size",
    "decoder_start_token_id",
    "sep_token_id",
    // Generation defaults that transformers 4.x wrote into config.json; generation
    // settings come from generation_config.json and the command line.
    "max_length",
    "min_length",
    "do_sample",
    "early_stopping",
    "num_beams",
    "num_beam_groups",
    "diversity_penalty",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "num_return_sequences",
    "output_scores",
    "return_dict_in_generate",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "remove_invalid_values",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
];

/// Keys read by [`GemmaConfig::parse`], per family.
const COMMON_KEYS: &[&str] = &[
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "hidden_act",
    "hidden_activation",
    "max_position_embeddings",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "torch_dtype",
    "dtype",
    "rope_theta",
    "rope_parameters",
    "attention_bias",
    "attention_dropout",
    "use_bidirectional_attention",
    "quantization_config",
];
const GEMMA2_KEYS: &[&str] = &[
    "query_pre_attn_scalar",
    "sliding_window",
    "sliding_window_size",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "layer_types",
];
const GEMMA3N_KEYS: &[&str] = &[
    "sliding_window",
    "layer_types",
    "final_logit_softcapping",
    "rope_local_base_freq",
    "rope_scaling",
    "vocab_size_per_layer_input",
    "hidden_size_per_layer_input",
    "altup_active_idx",
    "altup_coef_clip",
    "altup_correct_scale",
    "altup_num_inputs",
    "num_kv_shared_layers",
    "laurel_rank",
    "activation_sparsity_pattern",
];
const GEMMA4_KEYS: &[&str] = &[
    "sliding_window",
    "layer_types",
    "final_logit_softcapping",
    "vocab_size_per_layer_input",
    "hidden_size_per_layer_input",
    "attention_k_eq_v",
    "num_kv_shared_layers",
    "enable_moe_block",
    "use_double_wide_mlp",
    "num_experts",
    "top_k_experts",
    "moe_intermediate_size",
    "global_head_dim",
    "num_global_key_value_heads",
    "per_layer_config",
];
const GEMMA3_KEYS: &[&str] = &[
    "rope_local_base_freq",
    "rope_scaling",
    "sliding_window_pattern",
    "_sliding_window_pattern",
];

impl GemmaConfig {
    /// Reads `config.json` (or any file holding one).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses the JSON text of a `config.json`; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let Value::Object(map) = value else {
            return Err(Fields::new(&Map::new(), path).error("(root)", "expected a JSON object"));
        };
        let fields = Fields::new(&map, path);
        match fields.multimodal()? {
            Some(text) => text.fields(path).gemma_config(),
            None => fields.gemma_config(),
        }
    }

    /// Number of decoder layers.
    pub fn num_hidden_layers(&self) -> usize {
        self.layer_types.len()
    }

    /// Rotary embedding used by a layer of this type.
    pub fn rope(&self, layer_type: LayerType) -> Rope {
        match layer_type {
            LayerType::Full => self.rope_full,
            LayerType::Sliding => self.rope_sliding,
        }
    }

    /// Gemma 2 and 3 normalise both before and after attention and MLP.
    pub fn has_sandwich_norms(&self) -> bool {
        self.family != Family::Gemma
    }

    /// Gemma 3, 3n and 4 normalise queries and keys per head.
    pub fn has_qk_norm(&self) -> bool {
        matches!(self.family, Family::Gemma3 | Family::Gemma3n | Family::Gemma4)
    }

    /// Gemma 3n and 4 scale their norms by `w`, the earlier generations by `1 + w`; they also
    /// normalise values (without a weight) and scale attention scores by 1, the q/k norms
    /// having taken the query scale's place.
    pub fn norm_weight_offset(&self) -> f64 {
        match self.family {
            Family::Gemma3n | Family::Gemma4 => 0.0,
            _ => 1.0,
        }
    }

    /// Whether values are normalised per head before attention (Gemma 3n, Gemma 4).
    pub fn has_v_norm(&self) -> bool {
        self.norm_weight_offset() == 0.0
    }

    /// Gemma 4 multiplies each layer's output by a stored scalar (`layer_scalar`).
    pub fn has_layer_scalar(&self) -> bool {
        self.family == Family::Gemma4
    }

    /// The width of the residual stream between layers: `hidden_size`, or Gemma 3n's AltUp
    /// versions side by side.
    pub fn residual_width(&self) -> usize {
        self.altup.map_or(1, |a| a.num_inputs) * self.hidden_size
    }

    /// Head size of layers of this type.
    pub fn head_dim_of(&self, layer_type: LayerType) -> usize {
        match layer_type {
            LayerType::Full => self.full_head_dim,
            LayerType::Sliding => self.head_dim,
        }
    }

    /// Key/value heads of layers of this type.
    pub fn key_value_heads_of(&self, layer_type: LayerType) -> usize {
        match layer_type {
            LayerType::Full => self.full_key_value_heads,
            LayerType::Sliding => self.num_key_value_heads,
        }
    }

    /// Whether layer `layer` projects values with the key projection (`attention_k_eq_v`).
    pub fn values_from_keys(&self, layer: usize) -> bool {
        self.attention_k_eq_v && self.layer_types[layer] == LayerType::Full
    }

    /// For a layer that shares keys and values, the layer whose it uses: the last layer of its
    /// type before the shared ones. `None` for a layer that computes its own.
    pub fn kv_source(&self, layer: usize) -> Option<usize> {
        let first_shared = self.num_hidden_layers() - self.num_kv_shared_layers;
        if layer < first_shared {
            return None;
        }
        let layer_type = self.layer_types[layer];
        (0..first_shared).rev().find(|&i| self.layer_types[i] == layer_type)
    }

    /// Whether a later layer uses layer `layer`'s keys and values.
    pub fn shares_kv(&self, layer: usize) -> bool {
        (0..self.num_hidden_layers()).any(|i| self.kv_source(i) == Some(layer))
    }

    /// The checkpoint name of a tensor of the text model, whose own paths start with `model.`
    /// (`model.layers.0.mlp.up_proj.weight`): under [`Self::module_prefix`].
    pub fn checkpoint_name(&self, name: &str) -> String {
        match name.strip_prefix("model.") {
            Some(rest) if self.module_prefix != "model" => format!("{}.{rest}", self.module_prefix),
            _ => name.to_string(),
        }
    }

    /// Number of parameters, counting the tied embedding once.
    pub fn parameter_count(&self) -> usize {
        let h = self.hidden_size;
        let offset_norms = |n: usize| n * h;
        let layers: usize = (0..self.num_hidden_layers())
            .map(|i| {
                let layer_type = self.layer_types[i];
                let d = self.head_dim_of(layer_type);
                let q = self.num_attention_heads * d;
                let kv = self.key_value_heads_of(layer_type) * d;
                let own_kv = self.kv_source(i).is_none();
                let kv_projections = match (own_kv, self.values_from_keys(i)) {
                    (false, _) => 0,
                    (true, true) => h * kv,
                    (true, false) => 2 * h * kv,
                };
                let qk_norms = match (self.has_qk_norm(), own_kv) {
                    (false, _) => 0,
                    (true, true) => 2 * d,
                    (true, false) => d,
                };
                let norms = offset_norms(if self.has_sandwich_norms() { 4 } else { 2 }) + qk_norms;
                let mlp = 3 * h * self.layer_intermediate_sizes[i];
                let ple = self.per_layer_inputs.map_or(0, |p| 2 * h * p.hidden_size + h);
                let altup = self.altup.map_or(0, |a| {
                    h + a.num_inputs * a.num_inputs * (1 + a.num_inputs) + a.num_inputs * h + h
                });
                let laurel = self.laurel_rank.map_or(0, |r| 2 * h * r + h);
                let moe = self.moe.map_or(0, |m| {
                    h * m.num_experts + h + m.num_experts + m.num_experts * 3 * h * m.intermediate_size + 3 * h
                });
                let scalar = usize::from(self.has_layer_scalar());
                h * q + kv_projections + q * h + mlp + norms + ple + altup + laurel + moe + scalar
            })
            .sum();
        let per_layer = self.per_layer_inputs.map_or(0, |p| {
            let width = self.num_hidden_layers() * p.hidden_size;
            p.vocab_size * width + h * width + p.hidden_size
        });
        let altup = self.altup.map_or(0, |a| 2 * (a.num_inputs - 1) * h * h);
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * h
        };
        self.vocab_size * h + layers + per_layer + altup + h + head
    }
}

/// A config object being read, with the file it came from for messages.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: &'a Path,
    /// Where the object sits in the file, for messages: `text_config.` in a multimodal config.
    key_prefix: &'static str,
    /// The text decoder's module path in the checkpoint (see [`GemmaConfig::module_prefix`]).
    module_prefix: &'static str,
}

impl<'a> Fields<'a> {
    fn new(map: &'a Map<String, Value>, path: &'a Path) -> Self {
        Self {
            map,
            path,
            key_prefix: "",
            module_prefix: "model",
        }
    }

    fn error(&self, key: &str, message: impl Into<String>) -> ModelError {
        ModelError::Config {
            path: self.path.to_path_buf(),
            key: format!("{}{key}", self.key_prefix),
            message: message.into(),
        }
    }

    /// The value of `key`, treating JSON `null` as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| self.error(key, format!("expected a non-negative integer, found {v}")))
            })
            .transpose()
    }

    fn required_usize(&self, key: &str) -> Result<usize> {
        self.usize(key)?
            .ok_or_else(|| self.error(key, "missing; it is required to build the model"))
    }

    fn f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| self.error(key, format!("expected a number, found {v}")))
            })
            .transpose()
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| self.error(key, format!("expected true or false, found {v}")))
            })
            .transpose()
    }

    fn str(&self, key: &str) -> Result<Option<&'a str>> {
        self.get(key)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| self.error(key, format!("expected a string, found {v}")))
            })
            .transpose()
    }

    /// A token id or a list of them (`eos_token_id` is either).
    fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        let bad = |v: &Value| self.error(key, format!("expected a token id or a list of ids, found {v}"));
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_u64().map(|n| n as u32).ok_or_else(|| bad(v)))
                .collect(),
            Some(v) => v.as_u64().map(|n| vec![n as u32]).ok_or_else(|| bad(v)),
        }
    }

    fn family(&self) -> Result<Family> {
        let model_type = self.str("model_type")?.ok_or_else(|| {
            self.error(
                "model_type",
                "missing; expected gemma, gemma2, gemma3_text, gemma3n_text or gemma4_text",
            )
        })?;
        match model_type {
            "gemma" => Ok(Family::Gemma),
            "gemma2" => Ok(Family::Gemma2),
            "gemma3_text" => Ok(Family::Gemma3),
            "gemma3n_text" => Ok(Family::Gemma3n),
            // Gemma 4 "unified" is the dense Gemma 4 decoder without per-layer embeddings or
            // experts (its config has neither key).
            "gemma4_text" | "gemma4_unified_text" => Ok(Family::Gemma4),
            "gemma3" => Err(self.error(
                "model_type",
                "this is a multimodal Gemma 3 checkpoint; Ember runs the text model (gemma3_text): \
                 use a text-only checkpoint such as gemma-3-270m or gemma-3-1b",
            )),
            other => Err(ModelError::UnknownModelType {
                path: self.path.to_path_buf(),
                found: other.to_string(),
            }),
        }
    }

    fn gemma_config(&self) -> Result<GemmaConfig> {
        let family = self.family()?;
        self.check_keys(family);
        self.refuse_unsupported(family)?;
        let gemma3n_or_4 = matches!(family, Family::Gemma3n | Family::Gemma4);

        let hidden_size = self.required_usize("hidden_size")?;
        let num_attention_heads = self.required_usize("num_attention_heads")?;
        let num_key_value_heads = self.usize("num_key_value_heads")?.unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(self.error(
                "num_key_value_heads",
                format!("{num_key_value_heads} does not divide num_attention_heads = {num_attention_heads}"),
            ));
        }
        // transformers would silently assume 256 (Gemma 7B's value): make the user say it.
        let head_dim = self.required_usize("head_dim")?;
        let num_layers = self.required_usize("num_hidden_layers")?;
        if num_layers == 0 {
            return Err(self.error("num_hidden_layers", "must be greater than zero"));
        }
        let layer_types = self.layer_types(family, num_layers)?;
        let sliding_window = match family {
            Family::Gemma => None,
            Family::Gemma3n | Family::Gemma4 => {
                let default = if self.is_gemma4_unified()? { 1024 } else { 512 };
                Some(self.usize("sliding_window")?.unwrap_or(default))
            }
            _ => Some(
                self.usize("sliding_window")?
                    .or(self.usize("sliding_window_size")?)
                    .ok_or_else(|| self.error("sliding_window", "missing; sliding-window layers need it"))?,
            ),
        };
        // Absent keys take transformers' class defaults; an explicit `null` disables.
        let query_pre_attn_scalar = match family {
            Family::Gemma => head_dim as f64,
            // Scores are not scaled: the q/k norms keep them in range.
            Family::Gemma3n | Family::Gemma4 => 1.0,
            _ => self.f64("query_pre_attn_scalar")?.unwrap_or(256.0),
        };
        let (rope_full, rope_sliding) = self.ropes(family)?;
        let softcap = |key: &str, gemma2_default: f64| -> Result<Option<f64>> {
            match (family, self.map.contains_key(key)) {
                (Family::Gemma, _) => Ok(None),
                (Family::Gemma2, false) => Ok(Some(gemma2_default)),
                _ => self.f64(key),
            }
        };
        let final_logit_softcapping = match (family, self.map.contains_key("final_logit_softcapping")) {
            (Family::Gemma3n, false) => Some(30.0),
            _ => softcap("final_logit_softcapping", 30.0)?,
        };
        let attn_logit_softcapping = match gemma3n_or_4 {
            true => None,
            false => softcap("attn_logit_softcapping", 50.0)?,
        };
        let intermediate_sizes = self.intermediate_sizes(family, num_layers)?;
        let ext = self.extensions(family, &layer_types, head_dim, num_key_value_heads, intermediate_sizes)?;
        let max_position_default = match family {
            Family::Gemma3n => 32_768,
            Family::Gemma4 if self.is_gemma4_unified()? => 262_144,
            Family::Gemma4 => 131_072,
            _ => 8192,
        };

        let config = GemmaConfig {
            family,
            vocab_size: self.required_usize("vocab_size")?,
            hidden_size,
            intermediate_size: ext.layer_intermediate_sizes[0],
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: self.f64("rms_norm_eps")?.unwrap_or(1e-6),
            activation: self.activation(family)?,
            max_position_embeddings: self.usize("max_position_embeddings")?.unwrap_or(max_position_default),
            layer_types,
            sliding_window,
            attn_logit_softcapping,
            final_logit_softcapping,
            query_pre_attn_scalar,
            rope_full,
            rope_sliding,
            tie_word_embeddings: self.bool("tie_word_embeddings")?.unwrap_or(true),
            bos_token_id: self.usize("bos_token_id")?.map(|n| n as u32),
            eos_token_ids: self.token_ids("eos_token_id")?,
            pad_token_id: self.usize("pad_token_id")?.map(|n| n as u32),
            torch_dtype: self.str("torch_dtype")?.or(self.str("dtype")?).map(str::to_string),
            module_prefix: self.module_prefix.to_string(),
            layer_intermediate_sizes: ext.layer_intermediate_sizes,
            full_head_dim: ext.full_head_dim,
            full_key_value_heads: ext.full_key_value_heads,
            attention_k_eq_v: ext.attention_k_eq_v,
            num_kv_shared_layers: ext.num_kv_shared_layers,
            per_layer_inputs: ext.per_layer_inputs,
            altup: ext.altup,
            laurel_rank: ext.laurel_rank,
            activation_sparsity: ext.activation_sparsity,
            moe: ext.moe,
        };
        for (key, value) in [
            ("hidden_size", config.hidden_size),
            ("vocab_size", config.vocab_size),
            ("num_attention_heads", config.num_attention_heads),
            ("head_dim", config.head_dim),
        ] {
            if value == 0 {
                return Err(self.error(key, "must be greater than zero"));
            }
        }
        if config.layer_intermediate_sizes.contains(&0) {
            return Err(self.error("intermediate_size", "must be greater than zero"));
        }
        if !config.head_dim.is_multiple_of(2) {
            return Err(self.error("head_dim", "must be even for rotary embeddings"));
        }
        Ok(config)
    }

    /// Warns about keys this family's config does not define.
    fn check_keys(&self, family: Family) {
        let family_keys: &[&[&str]] = match family {
            Family::Gemma => &[COMMON_KEYS],
            Family::Gemma2 => &[COMMON_KEYS, GEMMA2_KEYS],
            Family::Gemma3 => &[COMMON_KEYS, GEMMA2_KEYS, GEMMA3_KEYS],
            Family::Gemma3n => &[COMMON_KEYS, GEMMA3N_KEYS],
            Family::Gemma4 => &[COMMON_KEYS, GEMMA4_KEYS],
        };
        for key in self.map.keys() {
            let known =
                DESCRIPTIVE_KEYS.contains(&key.as_str()) || family_keys.iter().any(|keys| keys.contains(&key.as_str()));
            if !known {
                tracing::warn!(
                    "{}: key `{key}` is not part of a {family:?} config and is not used",
                    self.path.display()
                );
            }
        }
    }

    /// Refuses settings that would change the computation in ways Ember does not implement.
    fn refuse_unsupported(&self, family: Family) -> Result<()> {
        // bitsandbytes' 4-bit weights are read as stored (`bnb`); other formats are refused.
        if let Some(quantization) = self.get("quantization_config") {
            let method = quantization
                .get("quant_method")
                .and_then(Value::as_str)
                .unwrap_or("none");
            let four_bit = quantization.get("load_in_4bit").and_then(Value::as_bool) == Some(true);
            if method != "bitsandbytes" || !four_bit {
                return Err(self.error(
                    "quantization_config",
                    format!(
                        "quant_method `{method}`{} is not supported: Ember reads bitsandbytes 4-bit checkpoints \
                         (load_in_4bit); use those or the bf16/f32 weights",
                        if method == "bitsandbytes" { " in 8 bits" } else { "" }
                    ),
                ));
            }
        }
        if self.bool("attention_bias")? == Some(true) {
            return Err(self.error(
                "attention_bias",
                "attention biases are not part of any Gemma; expected false",
            ));
        }
        if let Some(p) = self.f64("attention_dropout")?
            && p != 0.0
        {
            return Err(self.error("attention_dropout", format!("{p} is not supported; set it to 0.0")));
        }
        match self.get("use_bidirectional_attention") {
            None | Some(Value::Bool(false)) => {}
            // Gemma 4 lets image tokens see each other; text alone is causal.
            Some(Value::String(s)) if s == "vision" && family == Family::Gemma4 => {}
            Some(value) => {
                return Err(self.error(
                    "use_bidirectional_attention",
                    format!("{value}: bidirectional encoders (EmbeddingGemma) are not causal language models"),
                ));
            }
        }
        Ok(())
    }

    fn activation(&self, family: Family) -> Result<Activation> {
        // `hidden_activation` overrides the legacy `hidden_act`; Gemma 1 checkpoints wrote
        // `hidden_act: "gelu"` but were trained with the tanh approximation, which is what
        // transformers has run for them since 4.39.
        let (key, legacy) = match self.str("hidden_activation")? {
            Some(_) => ("hidden_activation", false),
            None => ("hidden_act", family == Family::Gemma),
        };
        match self.str(key)? {
            None | Some("gelu_pytorch_tanh" | "gelu_new" | "gelu_fast") => Ok(Activation::GeluTanh),
            Some("gelu") if legacy => Ok(Activation::GeluTanh),
            Some("gelu") => Ok(Activation::GeluErf),
            Some(other) => Err(self.error(
                key,
                format!("activation `{other}` is not supported; expected gelu_pytorch_tanh or gelu"),
            )),
        }
    }

    fn layer_types(&self, family: Family, num_layers: usize) -> Result<Vec<LayerType>> {
        let mut types = self.listed_layer_types(family, num_layers)?;
        // transformers makes Gemma 4's last layer global whatever the config says.
        if family == Family::Gemma4 && types.last() != Some(&LayerType::Full) {
            tracing::warn!(
                "{}: the last layer of a Gemma 4 model is a full-attention layer (as transformers makes it)",
                self.path.display()
            );
            *types.last_mut().expect("at least one layer") = LayerType::Full;
        }
        Ok(types)
    }

    fn listed_layer_types(&self, family: Family, num_layers: usize) -> Result<Vec<LayerType>> {
        if let Some(value) = self.get("layer_types").filter(|_| family != Family::Gemma) {
            let items = value
                .as_array()
                .ok_or_else(|| self.error("layer_types", "expected a list"))?;
            if items.len() != num_layers {
                return Err(self.error(
                    "layer_types",
                    format!("has {} entries but num_hidden_layers is {num_layers}", items.len()),
                ));
            }
            return items
                .iter()
                .map(|v| match v.as_str() {
                    Some("full_attention") => Ok(LayerType::Full),
                    Some("sliding_attention") => Ok(LayerType::Sliding),
                    _ => Err(self.error(
                        "layer_types",
                        format!("unknown entry {v}; expected full_attention or sliding_attention"),
                    )),
                })
                .collect();
        }
        // Before `layer_types` existed: Gemma 2 alternates starting with a sliding layer,
        // Gemma 3 has every `sliding_window_pattern`-th layer global.
        let pattern = match family {
            Family::Gemma => return Ok(vec![LayerType::Full; num_layers]),
            Family::Gemma2 => 2,
            Family::Gemma3 => self
                .usize("sliding_window_pattern")?
                .or(self.usize("_sliding_window_pattern")?)
                .unwrap_or(6),
            Family::Gemma3n => 5,
            Family::Gemma4 => 6,
        };
        if pattern == 0 {
            return Err(self.error("sliding_window_pattern", "must be greater than zero"));
        }
        Ok((0..num_layers)
            .map(|i| {
                if (i + 1).is_multiple_of(pattern) {
                    LayerType::Full
                } else {
                    LayerType::Sliding
                }
            })
            .collect())
    }

    /// RoPE for full and sliding layers, from `rope_parameters` (5.x) or the 4.x keys.
    fn ropes(&self, family: Family) -> Result<(Rope, Rope)> {
        // Each generation's default bases: Gemma 3 and 3n put global layers at 1e6.
        let full_theta = match family {
            Family::Gemma3 | Family::Gemma3n | Family::Gemma4 => 1_000_000.0,
            _ => 10_000.0,
        };
        if let Some(params) = self.get("rope_parameters") {
            let params = params
                .as_object()
                .ok_or_else(|| self.error("rope_parameters", "expected an object"))?;
            let nested = |name: &str| params.get(name).and_then(Value::as_object);
            return match (nested("full_attention"), nested("sliding_attention")) {
                (Some(full), Some(sliding)) => Ok((
                    self.rope_entry("rope_parameters.full_attention", full, full_theta)?,
                    self.rope_entry("rope_parameters.sliding_attention", sliding, 10_000.0)?,
                )),
                (None, None) => {
                    let rope = self.rope_entry("rope_parameters", params, full_theta)?;
                    Ok((rope, rope))
                }
                _ => Err(self.error(
                    "rope_parameters",
                    "expected both full_attention and sliding_attention entries, or neither",
                )),
            };
        }
        if family == Family::Gemma4 {
            // transformers' defaults: proportional RoPE on a quarter of the global layers' dims.
            let full = Rope {
                partial_rotary_factor: 0.25,
                ..Rope::new(full_theta)
            };
            return Ok((full, Rope::new(10_000.0)));
        }
        let theta = self.f64("rope_theta")?.unwrap_or(full_theta);
        let full = match self.get("rope_scaling") {
            Some(Value::Object(scaling)) => Rope {
                theta,
                ..self.rope_entry("rope_scaling", scaling, theta)?
            },
            Some(v) => return Err(self.error("rope_scaling", format!("expected an object, found {v}"))),
            None => Rope::new(theta),
        };
        let sliding = match family {
            Family::Gemma3 | Family::Gemma3n => Rope::new(self.f64("rope_local_base_freq")?.unwrap_or(10_000.0)),
            _ => full,
        };
        Ok((full, sliding))
    }

    /// One RoPE description: `{rope_type, rope_theta?, factor?, partial_rotary_factor?}`.
    fn rope_entry(&self, key: &str, entry: &Map<String, Value>, default_theta: f64) -> Result<Rope> {
        let sub = Fields::new(entry, self.path);
        let prefixed = |e: ModelError| match e {
            ModelError::Config { path, key: k, message } => ModelError::Config {
                path,
                key: format!("{}{key}.{k}", self.key_prefix),
                message,
            },
            other => other,
        };
        let rope_type = sub.str("rope_type").or_else(|_| sub.str("type")).map_err(prefixed)?;
        let theta = sub.f64("rope_theta").map_err(prefixed)?.unwrap_or(default_theta);
        let factor = sub.f64("factor").map_err(prefixed)?;
        let partial = sub.f64("partial_rotary_factor").map_err(prefixed)?;
        let rope_type = rope_type.unwrap_or("default");
        if rope_type != "proportional" && partial.is_some_and(|p| p != 1.0) {
            return Err(self.error(
                &format!("{key}.partial_rotary_factor"),
                format!("Gemma's `{rope_type}` RoPE rotates every dimension; only proportional RoPE takes a share"),
            ));
        }
        match rope_type {
            "default" => Ok(Rope::new(theta)),
            "linear" => {
                let factor =
                    factor.ok_or_else(|| self.error(&format!("{key}.factor"), "linear RoPE scaling needs a factor"))?;
                Ok(Rope {
                    factor,
                    ..Rope::new(theta)
                })
            }
            "proportional" => {
                let partial = partial.unwrap_or(1.0);
                if !(0.0..=1.0).contains(&partial) {
                    return Err(self.error(
                        &format!("{key}.partial_rotary_factor"),
                        format!("{partial} is not a share in [0, 1]"),
                    ));
                }
                Ok(Rope {
                    theta,
                    factor: factor.unwrap_or(1.0),
                    partial_rotary_factor: partial,
                })
            }
            other => Err(self.error(
                &format!("{key}.rope_type"),
                format!("RoPE type `{other}` is not supported; expected default, linear or proportional"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<GemmaConfig> {
        GemmaConfig::parse(&json.to_string(), Path::new("config.json"))
    }

    fn gemma(extra: serde_json::Value) -> serde_json::Value {
        let mut base = serde_json::json!({
            "model_type": "gemma", "vocab_size": 32, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
        });
        base.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        base
    }

    #[test]
    fn legacy_gelu_means_the_tanh_approximation() {
        let config = parse(gemma(serde_json::json!({"hidden_act": "gelu"}))).unwrap();
        assert_eq!(config.activation, Activation::GeluTanh);
    }

    #[test]
    fn hidden_activation_overrides_hidden_act() {
        let json = serde_json::json!({"hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu"});
        assert_eq!(parse(gemma(json)).unwrap().activation, Activation::GeluErf);
    }

    #[test]
    fn settings_that_change_the_computation_are_refused_by_name() {
        for (key, value) in [
            (
                "quantization_config",
                serde_json::json!({"quant_method": "bitsandbytes"}),
            ),
            ("attention_bias", serde_json::json!(true)),
            ("attention_dropout", serde_json::json!(0.1)),
            ("hidden_act", serde_json::json!("relu")),
            (
                "rope_parameters",
                serde_json::json!({"rope_type": "yarn", "factor": 4.0}),
            ),
            ("num_key_value_heads", serde_json::json!(3)),
        ] {
            let err = parse(gemma(serde_json::json!({ key: value }))).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn a_missing_required_key_is_named() {
        let mut json = gemma(serde_json::json!({}));
        json.as_object_mut().unwrap().remove("head_dim");
        assert!(parse(json).unwrap_err().to_string().contains("head_dim"));
    }

    #[test]
    fn multimodal_gemma3_points_to_the_text_model() {
        let err = parse(gemma(serde_json::json!({"model_type": "gemma3"}))).unwrap_err();
        assert!(err.to_string().contains("gemma3_text"), "{err}");
    }

    #[test]
    fn gemma2_without_layer_types_alternates_starting_with_sliding() {
        let json = gemma(serde_json::json!({"model_type": "gemma2", "num_hidden_layers": 4, "sliding_window": 8}));
        let config = parse(json).unwrap();
        use LayerType::*;
        assert_eq!(config.layer_types, vec![Sliding, Full, Sliding, Full]);
        // Absent soft-capping keys take transformers' Gemma 2 defaults.
        assert_eq!(config.attn_logit_softcapping, Some(50.0));
        assert_eq!(config.final_logit_softcapping, Some(30.0));
    }

    fn gemma4(extra: serde_json::Value) -> serde_json::Value {
        gemma(
            serde_json::json!({"model_type": "gemma4_text", "num_hidden_layers": 7})
                .as_object()
                .unwrap()
                .clone()
                .into_iter()
                .chain(extra.as_object().unwrap().clone())
                .collect(),
        )
    }

    #[test]
    fn gemma4_absent_keys_take_transformers_defaults() {
        let config = parse(gemma4(serde_json::json!({}))).unwrap();
        use LayerType::*;
        // 5:1 local/global, and the last layer made global.
        assert_eq!(
            config.layer_types,
            vec![Sliding, Sliding, Sliding, Sliding, Sliding, Full, Full]
        );
        assert_eq!(
            config.rope_full,
            Rope {
                theta: 1e6,
                factor: 1.0,
                partial_rotary_factor: 0.25
            }
        );
        assert_eq!(config.rope_sliding, Rope::new(10_000.0));
        assert_eq!((config.full_head_dim, config.full_key_value_heads), (512, 1));
        assert_eq!(
            config.per_layer_inputs,
            Some(PerLayerInputs {
                hidden_size: 256,
                vocab_size: 262_144
            })
        );
        assert_eq!((config.num_kv_shared_layers, config.sliding_window), (0, Some(512)));
        assert_eq!(
            (config.final_logit_softcapping, config.query_pre_attn_scalar),
            (None, 1.0)
        );
        assert_eq!(config.norm_weight_offset(), 0.0);
        assert!(config.moe.is_none() && !config.attention_k_eq_v);
    }

    #[test]
    fn global_head_settings_come_from_either_format() {
        let old = gemma4(serde_json::json!({
            "global_head_dim": 8, "num_global_key_value_heads": 2, "attention_k_eq_v": true,
        }));
        let new = gemma4(serde_json::json!({
            "attention_k_eq_v": true,
            "per_layer_config": {"5": {"head_dim": 8, "num_key_value_heads": 2}, "6": {"head_dim": 8, "num_key_value_heads": 2}},
        }));
        for json in [old, new] {
            let config = parse(json).unwrap();
            assert_eq!((config.full_head_dim, config.full_key_value_heads), (8, 2));
            assert_eq!((config.head_dim, config.num_key_value_heads), (4, 1));
            assert!(config.values_from_keys(6) && !config.values_from_keys(0));
        }
        // Without keys as values, the global key/value head count is not overridden.
        let config = parse(gemma4(
            serde_json::json!({"global_head_dim": 8, "num_global_key_value_heads": 2}),
        ))
        .unwrap();
        assert_eq!(config.full_key_value_heads, 1);
    }

    #[test]
    fn shared_keys_and_values_come_from_the_last_earlier_layer_of_their_type() {
        let json = gemma4(serde_json::json!({
            "num_hidden_layers": 6, "num_kv_shared_layers": 2, "use_double_wide_mlp": true,
            "layer_types": ["sliding_attention", "sliding_attention", "full_attention",
                            "sliding_attention", "sliding_attention", "full_attention"],
        }));
        let config = parse(json).unwrap();
        let sources: Vec<_> = (0..6).map(|i| config.kv_source(i)).collect();
        assert_eq!(sources, vec![None, None, None, None, Some(3), Some(2)]);
        assert!(config.shares_kv(2) && config.shares_kv(3) && !config.shares_kv(1));
        assert_eq!(config.layer_intermediate_sizes, vec![16, 16, 16, 16, 32, 32]);
    }

    #[test]
    fn multimodal_configs_are_read_for_their_text_decoder() {
        let text = gemma4(serde_json::json!({}));
        let mut text = text.as_object().unwrap().clone();
        text.remove("model_type");
        // As transformers 5.17 writes a sub-config: its descriptive keys, `dtype` null.
        text.extend(
            serde_json::json!({"dtype": null, "id2label": {"0": "LABEL_0"}, "return_dict": true,
            "_name_or_path": "", "architectures": null})
            .as_object()
            .unwrap()
            .clone(),
        );
        let json = serde_json::json!({
            "model_type": "gemma4", "text_config": text, "vision_config": {"hidden_size": 16},
            "audio_config": {}, "image_token_id": 9, "dtype": "bfloat16",
        });
        let config = parse(json.clone()).unwrap();
        assert_eq!(
            (config.family, config.module_prefix.as_str()),
            (Family::Gemma4, "model.language_model")
        );
        assert_eq!(config.torch_dtype.as_deref(), Some("bfloat16"));
        assert_eq!(
            config.checkpoint_name("model.layers.0.mlp.up_proj.weight"),
            "model.language_model.layers.0.mlp.up_proj.weight"
        );
        assert_eq!(config.checkpoint_name("lm_head.weight"), "lm_head.weight");
        // The export of the text decoder is a text model's config.
        let standalone = standalone_text_config(&json).unwrap();
        assert_eq!(standalone["model_type"], "gemma4_text");
        assert_eq!(standalone["architectures"][0], "Gemma4ForCausalLM");
        // A bad text key is named with its place.
        let mut bad = json;
        bad["text_config"]["attention_bias"] = true.into();
        let err = parse(bad).unwrap_err().to_string();
        assert!(err.contains("text_config.attention_bias"), "{err}");
    }

    #[test]
    fn gemma4_unified_is_gemma4_without_per_layer_inputs_or_experts() {
        let json = serde_json::json!({"model_type": "gemma4_unified", "text_config": gemma4(serde_json::json!({}))});
        let mut json = json;
        json["text_config"]["model_type"] = "gemma4_unified_text".into();
        let config = parse(json).unwrap();
        assert_eq!(config.family, Family::Gemma4);
        assert_eq!(
            (config.per_layer_inputs, config.moe, config.sliding_window),
            (None, None, Some(1024))
        );
    }

    #[test]
    fn gemma3n_reads_its_per_layer_lists_and_altup() {
        let json = gemma(serde_json::json!({
            "model_type": "gemma3n_text", "num_hidden_layers": 3, "intermediate_size": [8, 16, 8],
            "activation_sparsity_pattern": [0.95, 0.0, 0.0], "num_kv_shared_layers": 0,
            "hidden_size_per_layer_input": 2, "altup_num_inputs": 3, "laurel_rank": 2,
        }));
        let config = parse(json).unwrap();
        assert_eq!(config.layer_intermediate_sizes, vec![8, 16, 8]);
        assert_eq!(config.activation_sparsity, vec![0.95, 0.0, 0.0]);
        assert_eq!(
            config.altup.map(|a| (a.num_inputs, a.active_idx, a.coef_clip)),
            Some((3, 0, Some(120.0)))
        );
        assert_eq!(
            (config.laurel_rank, config.final_logit_softcapping),
            (Some(2), Some(30.0))
        );
        assert_eq!(config.residual_width(), 24);
        assert_eq!(config.rope_full.theta, 1e6);
    }

    #[test]
    fn gemma3n_and_4_settings_ember_cannot_apply_are_refused_by_name() {
        let layers = serde_json::json!([
            "sliding_attention",
            "full_attention",
            "sliding_attention",
            "full_attention"
        ]);
        for (json, key) in [
            (
                gemma4(serde_json::json!({"use_bidirectional_attention": "all"})),
                "use_bidirectional_attention",
            ),
            (
                gemma4(serde_json::json!({"per_layer_config": {"6": {"head_dim": 8, "sliding_window": 3}}})),
                "per_layer_config.6.sliding_window",
            ),
            (
                gemma4(serde_json::json!({"per_layer_config": {"0": {"head_dim": 8}}})),
                "per_layer_config",
            ),
            (
                gemma4(serde_json::json!({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}})),
                "rope_parameters.partial_rotary_factor",
            ),
            (
                gemma4(serde_json::json!({"num_hidden_layers": 4, "layer_types": layers, "num_kv_shared_layers": 3})),
                "num_kv_shared_layers",
            ),
            (
                gemma4(serde_json::json!({"enable_moe_block": true, "num_experts": 4})),
                "top_k_experts",
            ),
            (
                gemma(
                    serde_json::json!({"model_type": "gemma3n_text", "intermediate_size": [8], "num_kv_shared_layers": 0}),
                ),
                "intermediate_size",
            ),
            (
                gemma(
                    serde_json::json!({"model_type": "gemma3n_text", "activation_sparsity_pattern": 0.9, "num_kv_shared_layers": 0}),
                ),
                "activation_sparsity_pattern",
            ),
        ] {
            let err = parse(json).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn gemma3_pattern_makes_every_sixth_layer_global() {
        let json =
            gemma(serde_json::json!({"model_type": "gemma3_text", "num_hidden_layers": 12, "sliding_window": 8}));
        let config = parse(json).unwrap();
        let global: Vec<usize> = (0..12).filter(|&i| config.layer_types[i] == LayerType::Full).collect();
        assert_eq!(global, vec![5, 11]);
        assert_eq!(config.rope_full.theta, 1_000_000.0);
        assert_eq!(config.rope_sliding.theta, 10_000.0);
    }
}
