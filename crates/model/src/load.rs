//! Building a [`GemmaForCausalLM`] from checkpoint tensors. Field paths are the checkpoint
//! names, so this is a straight walk over the config.

use std::path::Path;

use burn::tensor::{DType, backend::Backend};
use indicatif::ProgressBar;

use crate::attention::Attention;
use crate::config::{GemmaConfig, LayerType};
use crate::embedding::Embedding;
use crate::error::{ModelError, Result};
use crate::layer::DecoderLayer;
use crate::linear::Linear;
use crate::mlp::Mlp;
use crate::model::{GemmaForCausalLM, GemmaModel};
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
}

impl LoadOptions {
    pub fn new(dtype: DType) -> Self {
        Self {
            dtype,
            progress: ProgressBar::hidden(),
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
        let mut w = Weights::<B> {
            source: Source::Tensors(source),
            device: device.clone(),
            dtype: options.dtype,
            progress: options.progress.clone(),
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
    pub fn random(config: GemmaConfig, dtype: DType, device: &B::Device) -> Self {
        let mut w = Weights::<B> {
            source: Source::Random { std: 0.02 },
            device: device.clone(),
            dtype,
            progress: ProgressBar::hidden(),
        };
        Self::from_weights(config, &mut w).expect("random weights cannot be missing or mis-shaped")
    }

    fn from_weights(config: GemmaConfig, w: &mut Weights<B>) -> Result<Self> {
        let h = config.hidden_size;
        let embed_tokens = Embedding {
            weight: w.param("model.embed_tokens.weight", [config.vocab_size, h])?,
        };
        let layers = config
            .layer_types
            .iter()
            .enumerate()
            .map(|(i, &layer_type)| decoder_layer(&config, layer_type, &format!("model.layers.{i}"), w))
            .collect::<Result<Vec<_>>>()?;
        let norm = rms_norm(&config, "model.norm", h, w)?;
        let lm_head = if config.tie_word_embeddings {
            // Some exports store the tied head anyway; transformers ignores it, so do we.
            w.skip("lm_head.weight");
            None
        } else {
            Some(linear("lm_head", [config.vocab_size, h], w)?)
        };
        Ok(Self {
            model: GemmaModel {
                embed_tokens,
                layers,
                norm,
            },
            lm_head,
            config,
        })
    }
}

fn decoder_layer<B: Backend>(
    cfg: &GemmaConfig,
    layer_type: LayerType,
    prefix: &str,
    w: &mut Weights<B>,
) -> Result<DecoderLayer<B>> {
    let h = cfg.hidden_size;
    let (q, kv) = (
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
    );
    let attn = format!("{prefix}.self_attn");
    let qk_norm = |name: &str, w: &mut Weights<B>| -> Result<Option<RmsNorm<B>>> {
        match cfg.has_qk_norm() {
            true => rms_norm(cfg, &format!("{attn}.{name}"), cfg.head_dim, w).map(Some),
            false => Ok(None),
        }
    };
    let self_attn = Attention {
        q_proj: linear(&format!("{attn}.q_proj"), [q, h], w)?,
        k_proj: linear(&format!("{attn}.k_proj"), [kv, h], w)?,
        v_proj: linear(&format!("{attn}.v_proj"), [kv, h], w)?,
        o_proj: linear(&format!("{attn}.o_proj"), [h, q], w)?,
        q_norm: qk_norm("q_norm", w)?,
        k_norm: qk_norm("k_norm", w)?,
        num_heads: cfg.num_attention_heads,
        num_kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
        scaling: cfg.query_pre_attn_scalar.powf(-0.5),
        softcap: cfg.attn_logit_softcapping,
    };
    let i = cfg.intermediate_size;
    let mlp = Mlp {
        gate_proj: linear(&format!("{prefix}.mlp.gate_proj"), [i, h], w)?,
        up_proj: linear(&format!("{prefix}.mlp.up_proj"), [i, h], w)?,
        down_proj: linear(&format!("{prefix}.mlp.down_proj"), [h, i], w)?,
        activation: cfg.activation,
    };
    let sandwich = |name: &str, w: &mut Weights<B>| -> Result<Option<RmsNorm<B>>> {
        match cfg.has_sandwich_norms() {
            true => rms_norm(cfg, &format!("{prefix}.{name}"), h, w).map(Some),
            false => Ok(None),
        }
    };
    Ok(DecoderLayer {
        self_attn,
        mlp,
        input_layernorm: rms_norm(cfg, &format!("{prefix}.input_layernorm"), h, w)?,
        post_attention_layernorm: rms_norm(cfg, &format!("{prefix}.post_attention_layernorm"), h, w)?,
        pre_feedforward_layernorm: sandwich("pre_feedforward_layernorm", w)?,
        post_feedforward_layernorm: sandwich("post_feedforward_layernorm", w)?,
        layer_type,
    })
}

fn linear<B: Backend>(prefix: &str, shape: [usize; 2], w: &mut Weights<B>) -> Result<Linear<B>> {
    Ok(Linear {
        weight: w.param(&format!("{prefix}.weight"), shape)?,
        lora: None,
    })
}

fn rms_norm<B: Backend>(cfg: &GemmaConfig, prefix: &str, size: usize, w: &mut Weights<B>) -> Result<RmsNorm<B>> {
    Ok(RmsNorm {
        weight: w.param(&format!("{prefix}.weight"), [size])?,
        eps: cfg.rms_norm_eps,
    })
}
