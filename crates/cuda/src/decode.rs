//! Generation on Ember's kernels: each step runs the training forward's layer kernels on the
//! new tokens (a prompt, or one token of each sequence being decoded), their keys and values
//! appended to their sequences' KV caches of fixed capacity that a decoding attention kernel
//! reads, then the LM head on the positions whose logits are wanted. Sizes, positions and
//! sequences are run-time arguments everywhere: nothing compiles per token or length.

use std::collections::HashMap;

use ember_model::{BatchDecodeStep, DecodeStep, GemmaForCausalLM, IGNORE_INDEX, ModelError, step_positions};
use ember_trainer::grads::MicroBatch;

use crate::adapters::Adapters;
use crate::batch::BatchData;
use crate::bridge::{CudaBackend, elem, wait_for_burn};
use crate::driver::Buffer;
use crate::error::{CudaError, Result};
use crate::gemm::Elem;
use crate::graph::Graph;
use crate::head::{HeadRun, head_logits};
use crate::layer::{LayerRun, ModelWeights, forward};
use crate::ops::{Cuda, DecodeCache};
use crate::scratch::{Dims, Scratch};
use ember_trainer::kernels::Favour;

/// One generation's state on the device.
pub struct CudaDecoder<'a> {
    model: &'a GemmaForCausalLM<CudaBackend>,
    elem: Elem,
    cuda: Cuda,
    adapters: Adapters,
    weights: ModelWeights,
    /// Where a 4-bit model's layer is dequantized; `weights` points into it.
    _dequant_room: Option<Buffer>,
    scratch: Scratch,
    /// Per layer: keys then values, each `[rows, capacity, kv_heads · head_dim]`.
    cache: Buffer,
    capacity: usize,
    /// Positions filled, per sequence.
    lens: Vec<usize>,
    /// The step's tokens, rewritten every step.
    data: BatchData,
    /// The hidden states between layers, `[tokens, hidden]` each (in, out).
    hidden: [Buffer; 2],
    logits: Buffer,
    /// Into how many splits the attention divides a decoding step's keys, and the room for
    /// their partial results (steps of up to `rows` tokens; longer steps take one split).
    splits: usize,
    partials: Buffer,
    /// Each decoding step width's captured launches; `None` once capturing failed.
    graphs: Option<HashMap<usize, Graph>>,
}

impl<'a> CudaDecoder<'a> {
    /// A decoder of `rows` sequences of up to `capacity` positions each, whose largest step
    /// (a prompt, or a token of every sequence) has `max_step` tokens. With `profile`, it
    /// prints its kernels' times by category when dropped.
    pub fn new(
        model: &'a GemmaForCausalLM<CudaBackend>,
        rows: usize,
        capacity: usize,
        max_step: usize,
        profile: bool,
    ) -> Result<Self> {
        let config = &model.config;
        let device = model.model.embed_tokens.weight.device();
        let e = elem(model.dtype())?;
        let mut cuda = Cuda::new(device.index)?;
        cuda.profile.set(profile);
        let mut adapters = Adapters::new();
        adapters.pack(&mut cuda, model, e)?;
        // Decoding keeps no attention output for a backward.
        let dims = Dims::new(
            config,
            1,
            max_step.max(rows).max(1),
            adapters.ranks(),
            e,
            false,
            Favour::Memory,
        );
        let kv = config.num_key_value_heads * config.head_dim;
        // The weights' last writes (loading, packing) may still be queued on burn's stream.
        wait_for_burn(&device)?;
        let layers = model.model.layers.len();
        // Enough blocks to fill the card at a few tokens a step, each at least 64 keys.
        let splits = capacity.div_ceil(64).clamp(1, 32);
        let head_record = (config.head_dim + 2) * 4;
        let partials = Buffer::new(rows * config.num_attention_heads * splits * head_record)?;
        let mut dequant_room = None;
        let weights = ModelWeights::hold(&cuda, model, e, &mut dequant_room)?;
        Ok(Self {
            model,
            elem: e,
            data: BatchData::with_capacity(config, dims.tokens)?,
            weights,
            _dequant_room: dequant_room,
            scratch: Scratch::new(dims)?,
            cache: Buffer::new(layers * 2 * rows * capacity * kv * e.size())?,
            capacity,
            lens: vec![0; rows],
            hidden: [
                Buffer::new(dims.tokens * config.hidden_size * e.size())?,
                Buffer::new(dims.tokens * config.hidden_size * e.size())?,
            ],
            logits: Buffer::new(rows * config.vocab_size * e.size())?,
            cuda,
            adapters,
            splits,
            partials,
            graphs: Some(HashMap::new()),
        })
    }

    /// Layer `layer`'s caches, for a step of `n` tokens laid out in `self.data`.
    fn layer_cache(&self, layer: usize, n: usize) -> DecodeCache {
        let c = &self.model.config;
        let seq_stride = self.capacity * c.num_key_value_heads * c.head_dim;
        let part = (self.lens.len() * seq_stride * self.elem.size()) as u64;
        let k = self.cache.ptr + 2 * layer as u64 * part;
        DecodeCache {
            k,
            v: k + part,
            seq_stride,
            positions: self.data.positions,
            segments: self.data.segments,
            splits: if n <= self.lens.len() { self.splits } else { 1 },
            partials: self.partials.ptr,
        }
    }

    /// Appends `tokens` (`(row, token)`, a row's tokens in order) to their sequences and
    /// returns the logits of the step's last `outputs` tokens, `[outputs, vocab]` row-major.
    fn run(&mut self, tokens: &[(usize, u32)], outputs: usize) -> Result<Vec<f32>> {
        let n = tokens.len();
        if n == 0 || n > self.scratch.dims.tokens || outputs > n.min(self.lens.len()) {
            return Err(CudaError::Unsupported(format!(
                "a step of {n} tokens ({outputs} logits) exceeds the decoder's {} tokens a step",
                self.scratch.dims.tokens
            )));
        }
        let (positions, lens) = step_positions(&self.lens, tokens, self.capacity).map_err(CudaError::Unsupported)?;
        self.cuda.gpu.bind()?;
        let config = &self.model.config;
        // Each token's segment is its sequence (1-based): the decoding kernels read it.
        let step = MicroBatch {
            batch: 1,
            seq: n,
            input_ids: tokens.iter().map(|&(_, id)| id as i64).collect(),
            segments: tokens.iter().map(|&(row, _)| row as i64 + 1).collect(),
            positions: positions.into_iter().map(|p| p as i64).collect(),
            targets: vec![IGNORE_INDEX; n],
            num_trained_tokens: 0,
            seed: 0,
        };
        self.data.write(&self.cuda.gpu, config, &step)?;
        // A decoding step (a logit for every token) repeats its launches at every token of a
        // given width: captured once, replayed. Prefills vary and run as they are.
        let stream = self.cuda.gpu.stream;
        let uncaptured = self.graphs.as_ref().is_some_and(|g| !g.contains_key(&n));
        if outputs == n && uncaptured && !self.cuda.profile.on() {
            match Graph::capture(stream, || self.queue(n, outputs)) {
                Ok(graph) => {
                    self.graphs.as_mut().expect("checked above").insert(n, graph);
                }
                Err(e) => {
                    tracing::warn!("decoding without CUDA graphs: capturing a step failed ({e})");
                    self.graphs = None;
                }
            }
        }
        match self.graphs.as_ref().and_then(|g| g.get(&n)) {
            Some(graph) if outputs == n => graph.launch(stream)?,
            _ => self.queue(n, outputs)?,
        }
        self.cuda.finish()?;
        self.lens = lens;
        let values = outputs * config.vocab_size;

        match self.elem {
            Elem::F32 => {
                let mut logits = vec![0f32; values];
                self.cuda.gpu.download(&mut logits, self.logits.ptr)?;
                Ok(logits)
            }
            Elem::Bf16 => {
                let mut bits = vec![0u16; values];
                self.cuda.gpu.download(&mut bits, self.logits.ptr)?;
                Ok(bits.iter().map(|&b| f32::from_bits((b as u32) << 16)).collect())
            }
        }
    }

    /// Queues a step of `n` tokens laid out in `self.data` on Ember's stream: the embedding,
    /// every layer (appending to the caches), and the logits of the last `outputs` tokens.
    fn queue(&mut self, n: usize, outputs: usize) -> Result<()> {
        let config = &self.model.config;
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
            run.cache = Some(self.layer_cache(index, n));
            forward(&mut self.cuda, &self.scratch, &run, x, y)?;
            std::mem::swap(&mut x, &mut y);
        }
        let head = HeadRun {
            norm: self.weights.final_norm,
            head: self.weights.head,
            targets: data.targets,
            tokens: outputs,
            cap: config.final_logit_softcapping.unwrap_or(0.0) as f32,
            eps: config.rms_norm_eps as f32,
            normaliser: 1.0,
        };
        let last = x + ((n - outputs) * config.hidden_size * self.elem.size()) as u64;
        head_logits(&mut self.cuda, &self.scratch, &head, last, self.logits.ptr)
    }
}

impl Drop for CudaDecoder<'_> {
    fn drop(&mut self) {
        if self.cuda.profile.on() {
            let times: Vec<String> = (self.cuda.profile.totals().iter())
                .map(|(category, ms, _)| format!("{category} {ms:.1} ms"))
                .collect();
            eprintln!("decoder kernels: {}", times.join(", "));
        }
    }
}

fn generation_error(e: CudaError) -> ModelError {
    ModelError::Generation(e.to_string())
}

impl DecodeStep for CudaDecoder<'_> {
    fn step(&mut self, ids: &[u32]) -> ember_model::Result<Vec<f32>> {
        BatchDecodeStep::prefill(self, 0, ids)
    }
}

impl BatchDecodeStep for CudaDecoder<'_> {
    fn prefill(&mut self, row: usize, ids: &[u32]) -> ember_model::Result<Vec<f32>> {
        let tokens: Vec<(usize, u32)> = ids.iter().map(|&id| (row, id)).collect();
        self.run(&tokens, 1).map_err(generation_error)
    }

    fn step(&mut self, tokens: &[(usize, u32)]) -> ember_model::Result<Vec<Vec<f32>>> {
        let vocab = self.model.config.vocab_size;
        let logits = self.run(tokens, tokens.len()).map_err(generation_error)?;
        Ok(logits.chunks(vocab).map(<[f32]>::to_vec).collect())
    }
}
