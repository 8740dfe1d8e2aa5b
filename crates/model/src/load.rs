//! Building a [`GemmaForCausalLM`] from checkpoint tensors. Field paths are the checkpoint
//! names, so this is a straight walk over the config.

use std::path::Path;

use burn::tensor::{DType, backend::Backend};
use indicatif::ProgressBar;

use crate::altup::AltUp;
use crate::attention::Attention;
use crate::bnb::FourBitConfig;
use crate::config::{Family, GemmaConfig};
use crate::embedding::Embedding;
use crate::error::{ModelError, Result};
use crate::expert_lora::ExpertLoras;
use crate::laurel::Laurel;
use crate::layer::DecoderLayer;
use crate::linear::Linear;
use crate::mlp::Mlp;
use crate::model::{GemmaForCausalLM, GemmaModel};
use crate::moe::{Experts, Router};
use crate::norm::RmsNorm;
use crate::source::ModelSource;
use crate::weights::{Source, TensorSource, Weights};

/// How to load a checkpoint.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The dtype weights and activations run in (f32, bf16 or f16).
    pub dtype: DType,
    /// Advanced by the bytes read; hidden by default.
    pub progress: ProgressBar,
    /// Load in 4 bits (QLoRA): the projections it applies to are quantized as they are read.
    /// Weights a checkpoint stores in bitsandbytes' 4-bit format load as such either way.
    pub four_bit: Option<FourBitConfig>,
}

impl LoadOptions {
    pub fn new(dtype: DType) -> Self {
        Self {
            dtype,
            progress: ProgressBar::hidden(),
            four_bit: None,
        }
    }
}

impl<B: Backend> GemmaForCausalLM<B> {
    /// Loads `config.json` and the safetensors weights of the checkpoint directory `path`, or
    /// the model in the GGUF file `path` (dequantized to `options.dtype`).
    /// ([`ModelSource::open`] then [`ModelSource::load`].)
    pub fn load(path: &Path, options: &LoadOptions, device: &B::Device) -> Result<Self> {
        ModelSource::open(path)?.load(options, device)
    }

    pub(crate) fn from_source(
        config: GemmaConfig,
        source: &mut dyn TensorSource,
        options: &LoadOptions,
        device: &B::Device,
    ) -> Result<Self> {
        if options.four_bit.is_some() && matches!(config.family, Family::Gemma3n | Family::Gemma4) {
            return Err(ModelError::Config {
                path: source.path(),
                key: "load_in_4bit".into(),
                message: "4-bit loading covers Gemma, Gemma 2 and Gemma 3 so far, not Gemma 3n or Gemma 4: \
                          load this model in bf16 (remove load_in_4bit)"
                    .into(),
            });
        }
        let mut w = Weights::<B> {
            source: Source::Tensors(source),
            device: device.clone(),
            dtype: options.dtype,
            progress: options.progress.clone(),
            four_bit: options.four_bit.clone(),
        };
        let model = Self::from_weights(config, &mut w)?;
        options.progress.finish_and_clear();
        Ok(model)
    }

    /// What loading `source` as a model of `config` would fail on, every problem at once: each
    /// missing, mis-shaped or unreadable tensor, then the tensors the model does not use. The
    /// walk is the loader's own, with one-element placeholders on `device` for the weights;
    /// `path` is where the tensors are, for messages.
    pub(crate) fn check_source(
        config: GemmaConfig,
        source: &mut dyn TensorSource,
        path: &Path,
        device: &B::Device,
    ) -> Vec<ModelError> {
        let mut w = Weights::<B> {
            source: Source::Check {
                source,
                problems: Vec::new(),
            },
            device: device.clone(),
            dtype: DType::F32,
            progress: ProgressBar::hidden(),
            four_bit: None,
        };
        // Placeholders cannot be missing or mis-shaped: problems are collected, not returned.
        let _ = Self::from_weights(config, &mut w);
        let Source::Check { source, mut problems } = w.source else {
            unreachable!("built with Source::Check")
        };
        let unused = source.unused();
        if let Some(first) = unused.first() {
            problems.push(ModelError::UnexpectedTensors {
                dir: path.to_path_buf(),
                count: unused.len(),
                first: first.clone(),
            });
        }
        problems
    }

    /// A model of `config`'s shape with Normal(0, 0.02) weights drawn on the device: what
    /// benchmarks need, since no real checkpoint of most shapes can be downloaded here and
    /// drawing billions of values on the host takes minutes.
    /// With `four_bit`, the projections it applies to are random 4-bit codes.
    pub fn random(config: GemmaConfig, dtype: DType, four_bit: Option<FourBitConfig>, device: &B::Device) -> Self {
        let mut w = Weights::<B> {
            source: Source::Random { std: 0.02 },
            device: device.clone(),
            dtype,
            progress: ProgressBar::hidden(),
            four_bit,
        };
        Self::from_weights(config, &mut w).expect("random weights cannot be missing or mis-shaped")
    }

    fn from_weights(config: GemmaConfig, w: &mut Weights<B>) -> Result<Self> {
        let h = config.hidden_size;
        let name = |n: &str| config.checkpoint_name(n);
        let embed_tokens = Embedding {
            weight: w.param(&name("model.embed_tokens.weight"), [config.vocab_size, h])?,
            scale: (h as f64).sqrt(),
        };
        let layers = (0..config.num_hidden_layers())
            .map(|i| decoder_layer(&config, i, w))
            .collect::<Result<Vec<_>>>()?;
        let norm = rms_norm(&config, &name("model.norm"), h, w)?;
        let (embed_tokens_per_layer, per_layer_model_projection, per_layer_projection_norm) =
            match config.per_layer_inputs {
                Some(p) => {
                    let width = config.num_hidden_layers() * p.hidden_size;
                    let table = Embedding {
                        weight: w.param(&name("model.embed_tokens_per_layer.weight"), [p.vocab_size, width])?,
                        scale: (p.hidden_size as f64).sqrt(),
                    };
                    let projection = linear(&name("model.per_layer_model_projection"), [width, h], w)?;
                    let norm = rms_norm(&config, &name("model.per_layer_projection_norm"), p.hidden_size, w)?;
                    (Some(table), Some(projection), Some(norm))
                }
                None => (None, None, None),
            };
        let extra_versions = config.altup.map_or(0, |a| a.num_inputs - 1);
        let altup = |kind: &str, w: &mut Weights<B>| -> Result<Vec<Linear<B>>> {
            (0..extra_versions)
                .map(|i| linear(&name(&format!("model.{kind}.{i}")), [h, h], w))
                .collect()
        };
        let altup_projections = altup("altup_projections", w)?;
        let altup_unembed_projections = altup("altup_unembed_projections", w)?;
        let lm_head = if config.tie_word_embeddings {
            // Some exports store the tied head anyway; transformers ignores it, so do we.
            w.skip("lm_head.weight");
            None
        } else {
            Some(linear("lm_head", [config.vocab_size, h], w)?)
        };
        if config.module_prefix != "model" {
            let others = w.skip_outside(&[&format!("{}.", config.module_prefix), "lm_head."]);
            for (module, count) in &others {
                tracing::info!("not loaded: {module} ({count} tensors), which Ember does not run");
            }
        }
        Ok(Self {
            model: GemmaModel {
                embed_tokens,
                layers,
                norm,
                embed_tokens_per_layer,
                per_layer_model_projection,
                per_layer_projection_norm,
                altup_projections,
                altup_unembed_projections,
            },
            lm_head,
            config,
        })
    }
}

fn decoder_layer<B: Backend>(cfg: &GemmaConfig, index: usize, w: &mut Weights<B>) -> Result<DecoderLayer<B>> {
    let h = cfg.hidden_size;
    let layer_type = cfg.layer_types[index];
    let prefix = cfg.checkpoint_name(&format!("model.layers.{index}"));
    let head_dim = cfg.head_dim_of(layer_type);
    let (q, kv) = (
        cfg.num_attention_heads * head_dim,
        cfg.key_value_heads_of(layer_type) * head_dim,
    );
    let attn = format!("{prefix}.self_attn");
    let kv_source = cfg.kv_source(index);
    let own_kv = kv_source.is_none();
    // A layer that shares another's keys and values has no projections or norms of its own;
    // released Gemma 3n checkpoints store them anyway, and transformers ignores them, so do we.
    if !own_kv {
        for unused in ["k_proj", "v_proj", "k_norm", "v_norm"] {
            w.skip(&format!("{attn}.{unused}.weight"));
        }
    }
    let optional_linear = |present: bool, name: &str, shape, w: &mut Weights<B>| -> Result<Option<Linear<B>>> {
        present.then(|| linear(&format!("{attn}.{name}"), shape, w)).transpose()
    };
    let qk_norm = |present: bool, name: &str, w: &mut Weights<B>| -> Result<Option<RmsNorm<B>>> {
        (present && cfg.has_qk_norm())
            .then(|| rms_norm(cfg, &format!("{attn}.{name}"), head_dim, w))
            .transpose()
    };
    let self_attn = Attention {
        q_proj: linear(&format!("{attn}.q_proj"), [q, h], w)?,
        k_proj: optional_linear(own_kv, "k_proj", [kv, h], w)?,
        v_proj: optional_linear(own_kv && !cfg.values_from_keys(index), "v_proj", [kv, h], w)?,
        o_proj: linear(&format!("{attn}.o_proj"), [h, q], w)?,
        q_norm: qk_norm(true, "q_norm", w)?,
        k_norm: qk_norm(own_kv, "k_norm", w)?,
        v_norm_eps: cfg.has_v_norm().then_some(cfg.rms_norm_eps),
        kv_source,
        shares_kv: cfg.shares_kv(index),
        num_heads: cfg.num_attention_heads,
        num_kv_heads: cfg.key_value_heads_of(layer_type),
        head_dim,
        scaling: cfg.query_pre_attn_scalar.powf(-0.5),
        softcap: cfg.attn_logit_softcapping,
    };
    let i = cfg.layer_intermediate_sizes[index];
    let mlp = Mlp {
        gate_proj: linear(&format!("{prefix}.mlp.gate_proj"), [i, h], w)?,
        up_proj: linear(&format!("{prefix}.mlp.up_proj"), [i, h], w)?,
        down_proj: linear(&format!("{prefix}.mlp.down_proj"), [h, i], w)?,
        activation: cfg.activation,
        sparsity: cfg.activation_sparsity[index],
    };
    let norm = |present: bool, name: &str, w: &mut Weights<B>| -> Result<Option<RmsNorm<B>>> {
        present
            .then(|| rms_norm(cfg, &format!("{prefix}.{name}"), h, w))
            .transpose()
    };
    let sandwich = cfg.has_sandwich_norms();
    let per_layer = cfg.per_layer_inputs.map(|p| p.hidden_size);
    let layer_linear = |name: &str, shape: Option<[usize; 2]>, w: &mut Weights<B>| -> Result<Option<Linear<B>>> {
        shape
            .map(|shape| linear(&format!("{prefix}.{name}"), shape, w))
            .transpose()
    };
    let moe = cfg.moe;
    let router = moe
        .map(|m| -> Result<Router<B>> {
            Ok(Router {
                proj: linear(&format!("{prefix}.router.proj"), [m.num_experts, h], w)?,
                scale: w.param(&format!("{prefix}.router.scale"), [h])?,
                per_expert_scale: w.param(&format!("{prefix}.router.per_expert_scale"), [m.num_experts])?,
                top_k: m.top_k,
                eps: cfg.rms_norm_eps,
            })
        })
        .transpose()?;
    let experts = moe
        .map(|m| -> Result<Experts<B>> {
            let (e, n) = (m.num_experts, m.intermediate_size);
            Ok(Experts {
                gate_up_proj: w.param(&format!("{prefix}.experts.gate_up_proj"), [e, 2 * n, h])?,
                down_proj: w.param(&format!("{prefix}.experts.down_proj"), [e, h, n])?,
                lora: ExpertLoras {
                    gate_up_proj: None,
                    down_proj: None,
                },
                activation: cfg.activation,
            })
        })
        .transpose()?;
    let altup = cfg
        .altup
        .map(|a| -> Result<AltUp<B>> {
            let n = a.num_inputs;
            let altup = format!("{prefix}.altup");
            Ok(AltUp {
                correct_output_scale: w.param(&format!("{altup}.correct_output_scale"), [h])?,
                correction_coefs: linear(&format!("{altup}.correction_coefs"), [n, n], w)?,
                prediction_coefs: linear(&format!("{altup}.prediction_coefs"), [n * n, n], w)?,
                modality_router: linear(&format!("{altup}.modality_router"), [n, h], w)?,
                router_norm: rms_norm(cfg, &format!("{altup}.router_norm"), h, w)?,
                active_idx: a.active_idx,
                coef_clip: a.coef_clip,
                correct_scale: a.correct_scale,
            })
        })
        .transpose()?;
    let laurel = cfg
        .laurel_rank
        .map(|r| -> Result<Laurel<B>> {
            let laurel = format!("{prefix}.laurel");
            Ok(Laurel {
                linear_left: linear(&format!("{laurel}.linear_left"), [r, h], w)?,
                linear_right: linear(&format!("{laurel}.linear_right"), [h, r], w)?,
                post_laurel_norm: rms_norm(cfg, &format!("{laurel}.post_laurel_norm"), h, w)?,
            })
        })
        .transpose()?;
    Ok(DecoderLayer {
        self_attn,
        mlp,
        input_layernorm: rms_norm(cfg, &format!("{prefix}.input_layernorm"), h, w)?,
        post_attention_layernorm: rms_norm(cfg, &format!("{prefix}.post_attention_layernorm"), h, w)?,
        pre_feedforward_layernorm: norm(sandwich, "pre_feedforward_layernorm", w)?,
        post_feedforward_layernorm: norm(sandwich, "post_feedforward_layernorm", w)?,
        per_layer_input_gate: layer_linear("per_layer_input_gate", per_layer.map(|p| [p, h]), w)?,
        per_layer_projection: layer_linear("per_layer_projection", per_layer.map(|p| [h, p]), w)?,
        post_per_layer_input_norm: norm(per_layer.is_some(), "post_per_layer_input_norm", w)?,
        router,
        experts,
        pre_feedforward_layernorm_2: norm(moe.is_some(), "pre_feedforward_layernorm_2", w)?,
        post_feedforward_layernorm_1: norm(moe.is_some(), "post_feedforward_layernorm_1", w)?,
        post_feedforward_layernorm_2: norm(moe.is_some(), "post_feedforward_layernorm_2", w)?,
        layer_scalar: cfg
            .has_layer_scalar()
            .then(|| w.param(&format!("{prefix}.layer_scalar"), [1]))
            .transpose()?,
        altup,
        laurel,
        layer_type,
    })
}

fn linear<B: Backend>(prefix: &str, shape: [usize; 2], w: &mut Weights<B>) -> Result<Linear<B>> {
    Ok(Linear {
        weight: w.projection(prefix, shape)?,
        lora: None,
    })
}

fn rms_norm<B: Backend>(cfg: &GemmaConfig, prefix: &str, size: usize, w: &mut Weights<B>) -> Result<RmsNorm<B>> {
    Ok(RmsNorm {
        weight: w.param(&format!("{prefix}.weight"), [size])?,
        eps: cfg.rms_norm_eps,
        offset: cfg.norm_weight_offset(),
    })
}
