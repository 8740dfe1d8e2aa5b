//! Generation's steps on the CPU: each step embeds its tokens (the prompt, then one token),
//! runs them through every layer, appending their keys and values to each layer's cache, and
//! returns the LM head's logits of the last of them. Every weight is read where burn keeps it.

use burn::backend::NdArray;
use burn::tensor::DType;
use ember_model::{DecodeStep, Family, GemmaForCausalLM, ModelError};

use crate::error::{CpuError, Result};
use crate::layer::Layer;
use crate::norm::Norm;
use crate::projection::Projection;
use crate::values::Values;

/// One generation's state: the model's weights (shared with it, not copied) and the KV caches.
pub struct CpuDecoder {
    embed: Values,
    /// `sqrt(hidden)` as stored in the model dtype.
    embed_scale: f32,
    hidden: usize,
    layers: Vec<Layer>,
    norm: Norm,
    head: Projection,
    final_softcap: Option<f32>,
    capacity: usize,
    /// Positions filled.
    len: usize,
}

impl CpuDecoder {
    /// Why the decoder cannot run `model`, if it cannot.
    pub fn unsupported(model: &GemmaForCausalLM<NdArray>) -> Option<String> {
        let family = model.config.family;
        if !matches!(family, Family::Gemma | Family::Gemma2 | Family::Gemma3) {
            return Some(format!(
                "it runs Gemma 1 to 3 layers; {family:?}'s (per-layer inputs, shared keys and values, \
                 AltUp, experts) run on burn's ops"
            ));
        }
        match model.dtype() {
            DType::F32 => None,
            dtype => Some(format!("it runs f32 models; this one is {dtype:?}")),
        }
    }

    /// A decoder for up to `capacity` positions.
    pub fn new(model: &GemmaForCausalLM<NdArray>, capacity: usize) -> Result<Self> {
        if let Some(why) = Self::unsupported(model) {
            return Err(CpuError::Unsupported(why));
        }
        let config = &model.config;
        let (vocab, hidden) = (config.vocab_size, config.hidden_size);
        let embed_weight = &model.model.embed_tokens;
        let embed = Values::of(embed_weight.weight.val(), "model.embed_tokens.weight")?;
        let head = match &model.lm_head {
            Some(head) => Projection::of(head, "lm_head")?,
            None => Projection::plain(
                Values::of(embed_weight.weight.val(), "model.embed_tokens.weight")?,
                vocab,
                hidden,
            ),
        };
        let layers = model
            .model
            .layers
            .iter()
            .enumerate()
            .map(|(index, layer)| Layer::new(layer, index, config, capacity))
            .collect::<Result<_>>()?;
        Ok(Self {
            embed,
            embed_scale: embed_weight.rounded_scale(),
            hidden,
            layers,
            norm: Norm::of(&model.model.norm, "model.norm")?,
            head,
            final_softcap: config.final_logit_softcapping.map(|c| c as f32),
            capacity,
            len: 0,
        })
    }

    fn run(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let (n, start) = (ids.len(), self.len);
        if n == 0 || start + n > self.capacity {
            return Err(CpuError::Step(format!(
                "a step of {n} tokens at position {start} does not fit the decoder's capacity of {} positions",
                self.capacity
            )));
        }
        let hidden = self.hidden;
        let embed = self.embed.get();
        let vocab = embed.len() / hidden;
        let mut x = Vec::with_capacity(n * hidden);
        for &id in ids {
            let id = id as usize;
            if id >= vocab {
                return Err(CpuError::Step(format!(
                    "token id {id} is outside the vocabulary of {vocab}"
                )));
            }
            x.extend(
                embed[id * hidden..(id + 1) * hidden]
                    .iter()
                    .map(|v| v * self.embed_scale),
            );
        }
        for layer in &mut self.layers {
            layer.forward(&mut x, start);
        }
        self.len += n;
        let mut last = x.split_off((n - 1) * hidden);
        self.norm.apply(&mut last);
        let mut logits = self.head.apply(&last);
        if let Some(cap) = self.final_softcap {
            for l in &mut logits {
                *l = (*l / cap).tanh() * cap;
            }
        }
        Ok(logits)
    }
}

impl DecodeStep for CpuDecoder {
    fn step(&mut self, ids: &[u32]) -> ember_model::Result<Vec<f32>> {
        self.run(ids).map_err(|e| ModelError::Generation(e.to_string()))
    }
}
