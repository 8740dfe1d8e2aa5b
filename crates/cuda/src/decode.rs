//! Generation on Ember's kernels: each step runs the training forward's layer kernels on the
//! new tokens (the prompt, then one token), their keys and values appended to a KV cache of
//! fixed capacity that a decoding attention kernel reads, then the LM head on the last
//! position. Sizes are run-time arguments everywhere: nothing compiles per token or length.

use ember_model::{DecodeStep, GemmaForCausalLM, IGNORE_INDEX, ModelError};
use ember_trainer::grads::MicroBatch;

use crate::adapters::Adapters;
use crate::batch::BatchData;
use crate::bridge::{CudaBackend, elem, wait_for_burn};
use crate::driver::Buffer;
use crate::error::{CudaError, Result};
use crate::gemm::Elem;
use crate::head::{HeadRun, head_logits};
use crate::layer::{KvSlot, LayerRun, ModelWeights, forward};
use crate::ops::Cuda;
use crate::scratch::{Dims, Scratch};

/// One generation's state on the device.
pub struct CudaDecoder<'a> {
    model: &'a GemmaForCausalLM<CudaBackend>,
    elem: Elem,
    cuda: Cuda,
    adapters: Adapters,
    weights: ModelWeights,
    scratch: Scratch,
    /// Per layer: keys then values, `[capacity, kv_heads · head_dim]` each.
    cache: Buffer,
    capacity: usize,
    /// Positions filled.
    len: usize,
    /// The step's tokens, rewritten every step.
    data: BatchData,
    /// The hidden states between layers, `[tokens, hidden]` each (in, out).
    hidden: [Buffer; 2],
    logits: Buffer,
}

impl<'a> CudaDecoder<'a> {
    /// A decoder for up to `capacity` positions whose largest step (the prompt) has
    /// `max_step` tokens.
    pub fn new(model: &'a GemmaForCausalLM<CudaBackend>, capacity: usize, max_step: usize) -> Result<Self> {
        let config = &model.config;
        let device = model.model.embed_tokens.weight.device();
        let e = elem(model.dtype())?;
        let mut cuda = Cuda::new(device.index)?;
        let mut adapters = Adapters::new();
        adapters.pack(&mut cuda, model, e)?;
        let dims = Dims::new(config, max_step.max(1), adapters.ranks(), e, false);
        let kv = config.num_key_value_heads * config.head_dim;
        // The weights' last writes (loading, packing) may still be queued on burn's stream.
        wait_for_burn(&device)?;
        let layers = model.model.layers.len();
        Ok(Self {
            model,
            elem: e,
            data: BatchData::with_capacity(config, dims.tokens)?,
            weights: ModelWeights::hold(&cuda, model, e)?,
            scratch: Scratch::new(dims)?,
            cache: Buffer::new(layers * 2 * capacity * kv * e.size())?,
            capacity,
            len: 0,
            hidden: [
                Buffer::new(dims.tokens * config.hidden_size * e.size())?,
                Buffer::new(dims.tokens * config.hidden_size * e.size())?,
            ],
            logits: Buffer::new(config.vocab_size * e.size())?,
            cuda,
            adapters,
        })
    }

    /// Layer `layer`'s cache, appended to at `start`.
    fn slot(&self, layer: usize, start: usize) -> KvSlot {
        let c = &self.model.config;
        let part = (self.capacity * c.num_key_value_heads * c.head_dim * self.elem.size()) as u64;
        let k = self.cache.ptr + 2 * layer as u64 * part;
        KvSlot { k, v: k + part, start }
    }

    fn run(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let (n, start) = (ids.len(), self.len);
        if start + n > self.capacity || n > self.scratch.dims.tokens {
            return Err(CudaError::Unsupported(format!(
                "a step of {n} tokens at position {start} exceeds the decoder's capacity of {} \
                 positions or {} tokens a step",
                self.capacity, self.scratch.dims.tokens
            )));
        }
        self.cuda.gpu.bind()?;
        let config = &self.model.config;
        let step = MicroBatch {
            batch: 1,
            seq: n,
            input_ids: ids.iter().map(|&id| id as i64).collect(),
            segments: vec![1; n],
            positions: (start..start + n).map(|p| p as i64).collect(),
            targets: vec![IGNORE_INDEX; n],
            num_trained_tokens: 0,
            seed: 0,
        };
        self.data.write(&self.cuda.gpu, config, &step)?;
        let data = &self.data;
        let (mut x, mut y) = (self.hidden[0].ptr, self.hidden[1].ptr);
        let scale = self.model.model.embed_tokens.rounded_scale();
        let hidden = config.hidden_size;
        self.cuda
            .embed(self.elem, data.ids, self.weights.embed, x, n, hidden, scale)?;
        for (index, layer) in self.model.model.layers.iter().enumerate() {
            let weights = self.weights.layer(&mut self.cuda, index, self.elem)?;
            let mut run = LayerRun::new(
                index,
                layer,
                &weights,
                &self.adapters,
                data,
                config.sliding_window,
                config.rms_norm_eps,
                [None; 7],
            );
            run.cache = Some(self.slot(index, start));
            forward(&mut self.cuda, &self.scratch, &run, x, y)?;
            std::mem::swap(&mut x, &mut y);
        }
        let head = HeadRun {
            norm: self.weights.final_norm,
            head: self.weights.head,
            targets: data.targets,
            tokens: 1,
            cap: config.final_logit_softcapping.unwrap_or(0.0) as f32,
            eps: config.rms_norm_eps as f32,
            normaliser: 1.0,
        };
        let last = x + ((n - 1) * config.hidden_size * self.elem.size()) as u64;
        head_logits(&mut self.cuda, &self.scratch, &head, last, self.logits.ptr)?;
        self.cuda.finish()?;
        self.len += n;
        let vocab = config.vocab_size;
        match self.elem {
            Elem::F32 => {
                let mut logits = vec![0f32; vocab];
                self.cuda.gpu.download(&mut logits, self.logits.ptr)?;
                Ok(logits)
            }
            Elem::Bf16 => {
                let mut bits = vec![0u16; vocab];
                self.cuda.gpu.download(&mut bits, self.logits.ptr)?;
                Ok(bits.iter().map(|&b| f32::from_bits((b as u32) << 16)).collect())
            }
        }
    }
}

impl DecodeStep for CudaDecoder<'_> {
    fn step(&mut self, ids: &[u32]) -> ember_model::Result<Vec<f32>> {
        self.run(ids).map_err(|e| ModelError::Generation(e.to_string()))
    }
}
