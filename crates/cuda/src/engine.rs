//! [`CudaKernels`]: the training step's layers and loss on Ember's CUDA kernels, behind
//! `ember_trainer::kernels::TrainKernels` so the trainer's schedule (checkpointing, dropout
//! seeds, accumulation) is the same as on every other backend.

use std::cell::{Cell, RefCell, RefMut};

use burn::tensor::{DType, Tensor};
use cubecl::cuda::CudaDevice;
use ember_model::{
    BatchDecodeStep, DecodeStep, Family, GemmaConfig, GemmaForCausalLM, LayerGrads, LayerKeep, LoraGrads,
};
use ember_trainer::estimate::{StepShape, burn_step_bytes};
use ember_trainer::grads::{AdapterGrads, MicroBatch};
use ember_trainer::kernels::{BatchKernels, Favour, Offloaded, TrainKernels};
use ember_trainer::optim::{BlockwiseAdamKernel, BlockwiseResult, BlockwiseStep};

use crate::adapters::{Adapters, projections};
use crate::batch::BatchData;
use crate::bridge::{CudaBackend, Holds, allocate_exactly, elem, empty, release_unused, wait_for_burn};
use crate::decode::CudaDecoder;
use crate::driver::Buffer;
use crate::error::{CudaError, Result};
use crate::head::{HeadRun, head_logits, head_loss};
use crate::layer::{GradOut, LayerRun, ModelWeights, backward, forward};
use crate::offload::Offload;
use crate::ops::Cuda;
use crate::scratch::{Dims, Scratch};

/// The CUDA fast path's training kernels. The device is set up on first use.
#[derive(Default)]
pub struct CudaKernels {
    state: RefCell<Option<State>>,
    /// Whether profiling was asked for (also before the device was set up).
    profiling: Cell<bool>,
    /// [`crate::bridge::hold_time`] when profiling started.
    holds_before: Cell<(f64, u64)>,
}

struct State {
    cuda: Cuda,
    adapters: Adapters,
    scratch: Option<Scratch>,
    /// Where offloaded layer inputs go (made on first use).
    offload: Option<Offload>,
    /// Where a 4-bit model's layer is dequantized (see [`ModelWeights::hold`]).
    dequant_room: Option<Buffer>,
    /// What the last micro-batch favoured.
    favour: Favour,
}

impl CudaKernels {
    pub fn new() -> Self {
        Self::default()
    }

    /// [`CudaDecoder`] of `rows` sequences, where these kernels run the model (`None` leaves
    /// generation to burn's ops).
    fn cuda_decoder<'a>(
        &self,
        model: &'a GemmaForCausalLM<CudaBackend>,
        rows: usize,
        capacity: usize,
        max_step: usize,
    ) -> Option<ember_trainer::Result<CudaDecoder<'a>>> {
        if self.unsupported(model).is_some() || model.config.head_dim > 256 {
            return None;
        }
        Some(CudaDecoder::new(model, rows, capacity, max_step, self.profiling.get()).map_err(Into::into))
    }

    /// `f` on the device, once a micro-batch has set it up.
    fn with_cuda<T>(&self, f: impl FnOnce(&mut Cuda) -> Result<T>) -> Result<T> {
        let mut state = self.state.borrow_mut();
        let st = state
            .as_mut()
            .ok_or_else(|| CudaError::Unsupported("the CUDA kernels have not run a micro-batch yet".into()))?;
        st.cuda.gpu.bind()?;
        f(&mut st.cuda)
    }
}

impl TrainKernels<CudaBackend> for CudaKernels {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn unsupported(&self, model: &GemmaForCausalLM<CudaBackend>) -> Option<String> {
        let family = model.config.family;
        if !matches!(family, Family::Gemma | Family::Gemma2 | Family::Gemma3) {
            return Some(format!(
                "they run Gemma 1 to 3 layers; {family:?}'s (per-layer inputs, shared keys and values, \
                 AltUp, experts, norms scaled by w) run on burn's kernels"
            ));
        }
        let dtype = model.dtype();
        if elem(dtype).is_err() {
            return Some(format!("they run in bf16 or f32, not {dtype:?}"));
        }
        if !model.config.head_dim.is_multiple_of(2) {
            return Some(format!("head_dim {} is odd", model.config.head_dim));
        }
        // The norm and GeGLU kernels read rows eight values at a time.
        let (hidden, intermediate) = (model.config.hidden_size, model.config.intermediate_size);
        if hidden % 8 != 0 || intermediate % 8 != 0 {
            return Some(format!(
                "hidden_size {hidden} or intermediate_size {intermediate} is not a multiple of 8"
            ));
        }
        None
    }

    fn step_bytes(&self, model: &GemmaConfig, shape: StepShape) -> u64 {
        let Ok(e) = elem(shape.dtype) else {
            return burn_step_bytes(model, shape);
        };
        let tokens = shape.batch * shape.seq;
        let r = shape.rank;
        // Every projection adapted at the largest rank: q/k/v, o, gate/up, down.
        let dims = Dims::new(
            model,
            shape.batch,
            shape.seq,
            [3 * r, r, 2 * r, r],
            e,
            shape.dropout,
            shape.favour,
        );
        // Beside the scratch: a layer's output and input gradient, the head's gradient
        // (burn tensors), and the step's adapter gradients (small).
        let hidden = (tokens * model.hidden_size * e.size()) as u64;
        Scratch::bytes_for(dims) as u64 + 3 * hidden
    }

    /// The CUDA context and cuBLAS's handles and workspace, as measured on an H200.
    fn runtime_bytes(&self) -> u64 {
        512 << 20
    }

    fn free_bytes(&self, device: &CudaDevice) -> Option<u64> {
        crate::driver::free_memory(device.index).ok()
    }

    fn set_profiling(&self, on: bool) {
        if let Some(state) = self.state.borrow_mut().as_mut() {
            state.cuda.profile.set(on);
        }
        self.profiling.set(on);
        self.holds_before.set(crate::bridge::hold_time());
    }

    fn kernel_times(&self) -> Vec<(String, f64, f64)> {
        let mut times = self.state.borrow().as_ref().map_or_else(Vec::new, |state| {
            state
                .cuda
                .profile
                .totals()
                .into_iter()
                .map(|(category, ms, flops)| (category.to_string(), ms / 1e3, flops))
                .collect::<Vec<_>>()
        });
        // Host time, not the GPU's: what holding burn's tensors for the kernels costs.
        let ((s0, n0), (s1, n1)) = (self.holds_before.get(), crate::bridge::hold_time());
        times.push((format!("host: holding burn tensors ({} trips)", n1 - n0), s1 - s0, 0.0));
        times
    }

    fn device_bytes(&self) -> u64 {
        self.state.borrow().as_ref().map_or(0, |s| {
            let room = s.dequant_room.as_ref().map_or(0, |r| r.bytes);
            (s.scratch.as_ref().map_or(0, Scratch::bytes) + s.adapters.bytes() + room) as u64
        })
    }

    fn global_norm(&self, grads: &AdapterGrads<CudaBackend>) -> ember_trainer::Result<f64> {
        match self.with_cuda(|cuda| crate::optimizer::global_norm(cuda, grads)) {
            Err(CudaError::Unsupported(_)) => Ok(ember_trainer::step::global_norm(grads)),
            other => Ok(other?),
        }
    }

    fn blockwise_adam(&self) -> Option<&dyn BlockwiseAdamKernel<CudaBackend>> {
        Some(self)
    }

    fn decoder<'a>(
        &'a self,
        model: &'a GemmaForCausalLM<CudaBackend>,
        capacity: usize,
        max_step: usize,
    ) -> Option<ember_trainer::Result<Box<dyn DecodeStep + 'a>>> {
        Some(
            self.cuda_decoder(model, 1, capacity, max_step)?
                .map(|d| Box::new(d) as Box<dyn DecodeStep + 'a>),
        )
    }

    fn batch_decoder<'a>(
        &'a self,
        model: &'a GemmaForCausalLM<CudaBackend>,
        rows: usize,
        capacity: usize,
        max_prompt: usize,
    ) -> Option<ember_trainer::Result<Box<dyn BatchDecodeStep + 'a>>> {
        Some(
            self.cuda_decoder(model, rows, capacity, max_prompt)?
                .map(|d| Box::new(d) as Box<dyn BatchDecodeStep + 'a>),
        )
    }

    fn prepare<'a>(
        &'a self,
        model: &'a GemmaForCausalLM<CudaBackend>,
        batch: &MicroBatch,
        favour: Favour,
    ) -> ember_trainer::Result<Box<dyn BatchKernels<CudaBackend> + 'a>> {
        // Callers choose burn's kernels for what these refuse; one that did not gets an error.
        if let Some(why) = self.unsupported(model) {
            return Err(CudaError::Unsupported(format!("Ember's CUDA kernels cannot run this model: {why}")).into());
        }
        Ok(Box::new(CudaBatch::new(
            self.state.borrow_mut(),
            model,
            batch,
            favour,
            self.profiling.get(),
        )?))
    }
}

impl BlockwiseAdamKernel<CudaBackend> for CudaKernels {
    fn step(&self, step: BlockwiseStep<'_, CudaBackend>) -> std::result::Result<BlockwiseResult<CudaBackend>, String> {
        // Favouring memory, the layers' hidden states (gone by now, their memory kept for the
        // next step's) go back before the update allocates the new parameters and state: the
        // step's peak is then the backward's, not the two together.
        let favour = self.state.borrow().as_ref().map(|s| s.favour);
        if favour == Some(Favour::Memory) {
            release_unused(&step.codes[0].device(), Favour::Memory);
        }
        self.with_cuda(|cuda| crate::optimizer::adamw8bit(cuda, step))
            .map_err(|e| e.to_string())
    }
}

struct CudaBatch<'a> {
    state: RefMut<'a, Option<State>>,
    model: &'a GemmaForCausalLM<CudaBackend>,
    device: CudaDevice,
    dtype: DType,
    data: BatchData,
    weights: ModelWeights,
}

impl<'a> CudaBatch<'a> {
    fn new(
        mut state: RefMut<'a, Option<State>>,
        model: &'a GemmaForCausalLM<CudaBackend>,
        batch: &MicroBatch,
        favour: Favour,
        profiling: bool,
    ) -> Result<Self> {
        let device = model.model.embed_tokens.weight.device();
        let dtype = model.dtype();
        let e = elem(dtype)?;
        if state.is_none() {
            let mut cuda = Cuda::new(device.index)?;
            cuda.profile.set(profiling);
            *state = Some(State {
                cuda,
                adapters: Adapters::new(),
                scratch: None,
                offload: None,
                dequant_room: None,
                favour,
            });
        }
        let st = state.as_mut().expect("set up above");
        st.favour = favour;
        st.cuda.gpu.bind()?;
        st.adapters.pack(&mut st.cuda, model, e)?;
        let data = BatchData::upload(&st.cuda.gpu, &model.config, batch)?;
        let ranks = st.adapters.ranks();
        let dropout = model
            .model
            .layers
            .iter()
            .flat_map(projections)
            .any(|linear| linear.lora.as_ref().is_some_and(|lora| lora.dropout > 0.0));
        allocate_exactly(&device);
        release_unused(&device, favour);
        let dims = Dims::new(&model.config, data.batch, data.seq, ranks, e, dropout, favour);
        if !st.scratch.as_ref().is_some_and(|s| s.dims.covers(&dims)) {
            st.scratch = None;
            st.scratch = Some(Scratch::new(dims)?);
        }
        let weights = ModelWeights::hold(&st.cuda, model, e, &mut st.dequant_room)?;
        Ok(Self {
            state,
            model,
            device,
            dtype,
            data,
            weights,
        })
    }

    fn parts(&mut self) -> (&mut Cuda, &Scratch, &Adapters) {
        let st = self.state.as_mut().expect("set up in new");
        (
            &mut st.cuda,
            st.scratch.as_ref().expect("allocated in new"),
            &st.adapters,
        )
    }

    /// Adds the layer's dropout masks to `holds`: their indices there, with each adapter's
    /// keep probability.
    fn add_keep(
        &self,
        index: usize,
        keep: &LayerKeep<CudaBackend>,
        holds: &mut Holds,
    ) -> Result<[Option<(usize, f32)>; 7]> {
        let linears = projections(&self.model.model.layers[index]);
        let mut masks = [None; 7];
        for (p, mask) in keep.iter().enumerate() {
            let (Some(mask), Some(lora)) = (mask, &linears[p].lora) else {
                continue;
            };
            if mask.dtype() != DType::F32 {
                return Err(CudaError::Unsupported(format!(
                    "dropout masks held as {:?}",
                    mask.dtype()
                )));
            }
            masks[p] = Some((holds.add(mask), (1.0 - lora.dropout) as f32));
        }
        Ok(masks)
    }

    fn hidden_shape(&self) -> [usize; 3] {
        [self.data.batch, self.data.seq, self.model.config.hidden_size]
    }
}

impl BatchKernels<CudaBackend> for CudaBatch<'_> {
    fn forward(
        &mut self,
        index: usize,
        x: Tensor<CudaBackend, 3>,
        keep: LayerKeep<CudaBackend>,
    ) -> ember_trainer::Result<Tensor<CudaBackend, 3>> {
        let y = empty(&self.device, self.hidden_shape(), self.dtype);
        let mut holds = Holds::default();
        let (x_at, y_at) = (holds.add(&x), holds.add(&y));
        let masks = self.add_keep(index, &keep, &mut holds)?;
        let held = holds.hold()?;
        let masks = masks.map(|m| m.map(|(i, keep_prob)| (held[i].ptr, keep_prob)));
        wait_for_burn(&self.device)?;
        let layer = &self.model.model.layers[index];
        let st = self.state.as_mut().expect("set up in new");
        let weights = self.weights.layer(&mut st.cuda, index, elem(self.dtype)?)?;
        let (config, data) = (&self.model.config, &self.data);
        let run = LayerRun::new(
            index,
            layer,
            &weights,
            &st.adapters,
            data,
            config.sliding_window,
            config.rms_norm_eps,
            masks,
        );
        forward(
            &mut st.cuda,
            st.scratch.as_ref().expect("allocated"),
            &run,
            held[x_at].ptr,
            held[y_at].ptr,
        )?;
        st.cuda.finish()?;
        Ok(y)
    }

    fn backward(
        &mut self,
        index: usize,
        x: Tensor<CudaBackend, 3>,
        grad: Tensor<CudaBackend, 3>,
        keep: LayerKeep<CudaBackend>,
    ) -> ember_trainer::Result<(Tensor<CudaBackend, 3>, LayerGrads<CudaBackend>)> {
        let dx = empty(&self.device, self.hidden_shape(), self.dtype);
        let layer = &self.model.model.layers[index];
        let mut grads: LayerGrads<CudaBackend> = Default::default();
        let mut holds = Holds::default();
        let mut grad_at = [None; 7];
        for (p, linear) in projections(layer).iter().enumerate() {
            if let Some(lora) = &linear.lora {
                let a = empty(&self.device, lora.a.val().dims(), DType::F32);
                let b = empty(&self.device, lora.b.val().dims(), DType::F32);
                grad_at[p] = Some((holds.add(&a), holds.add(&b)));
                grads[p] = Some(LoraGrads { a, b });
            }
        }
        let (x_at, dy_at, dx_at) = (holds.add(&x), holds.add(&grad), holds.add(&dx));
        let masks = self.add_keep(index, &keep, &mut holds)?;
        let held = holds.hold()?;
        let masks = masks.map(|m| m.map(|(i, keep_prob)| (held[i].ptr, keep_prob)));
        let out: GradOut = grad_at.map(|g| g.map(|(a, b)| (held[a].ptr, held[b].ptr)));
        wait_for_burn(&self.device)?;
        let st = self.state.as_mut().expect("set up in new");
        let weights = self.weights.layer(&mut st.cuda, index, elem(self.dtype)?)?;
        let (config, data) = (&self.model.config, &self.data);
        let run = LayerRun::new(
            index,
            layer,
            &weights,
            &st.adapters,
            data,
            config.sliding_window,
            config.rms_norm_eps,
            masks,
        );
        let scratch = st.scratch.as_ref().expect("allocated");
        let (x, dy, dx_ptr) = (held[x_at].ptr, held[dy_at].ptr, held[dx_at].ptr);
        backward(&mut st.cuda, scratch, &run, x, dy, dx_ptr, &out)?;
        st.cuda.finish()?;
        drop(held);
        Ok((dx, grads))
    }

    fn head(
        &mut self,
        x: Tensor<CudaBackend, 3>,
        normaliser: f64,
    ) -> ember_trainer::Result<(Tensor<CudaBackend, 1>, Tensor<CudaBackend, 3>)> {
        let dx = empty(&self.device, self.hidden_shape(), self.dtype);
        let loss = self.run_head(&x, Some(&dx), normaliser)?;
        Ok((loss, dx))
    }

    fn loss(&mut self, x: Tensor<CudaBackend, 3>) -> ember_trainer::Result<Tensor<CudaBackend, 1>> {
        Ok(self.run_head(&x, None, 1.0)?)
    }

    fn offload(&mut self, index: usize, x: Tensor<CudaBackend, 3>) -> ember_trainer::Result<Offloaded<CudaBackend>> {
        let layers = self.model.model.layers.len();
        let st = self.state.as_mut().expect("set up in new");
        st.cuda.gpu.bind()?;
        let offload = match &mut st.offload {
            Some(offload) => offload,
            none => none.insert(Offload::new()?),
        };
        offload.put(&st.cuda.gpu, &self.device, layers, index, x)?;
        Ok(Offloaded::Kernels)
    }

    fn reload(
        &mut self,
        index: usize,
        offloaded: Offloaded<CudaBackend>,
    ) -> ember_trainer::Result<Tensor<CudaBackend, 3>> {
        let shape = self.hidden_shape();
        let (dtype, device) = (self.dtype, self.device.clone());
        let st = self.state.as_mut().expect("set up in new");
        match (offloaded, st.offload.as_mut()) {
            (Offloaded::Kernels, Some(offload)) => Ok(offload.take(&st.cuda.gpu, &device, index, shape, dtype)?),
            _ => Err(
                CudaError::Unsupported(format!("layer {index}'s input was not offloaded by the CUDA kernels")).into(),
            ),
        }
    }

    fn logits(&mut self, x: Tensor<CudaBackend, 3>) -> ember_trainer::Result<Tensor<CudaBackend, 3>> {
        let [batch, seq, _] = self.hidden_shape();
        let out = empty(&self.device, [batch, seq, self.model.config.vocab_size], self.dtype);
        let mut holds = Holds::default();
        let (x_at, out_at) = (holds.add(&x), holds.add(&out));
        let held = holds.hold()?;
        wait_for_burn(&self.device)?;
        let run = self.head_run(1.0);
        let (cuda, scratch, _) = self.parts();
        head_logits(cuda, scratch, &run, held[x_at].ptr, held[out_at].ptr)?;
        cuda.finish()?;
        Ok(out)
    }
}

impl CudaBatch<'_> {
    fn head_run(&self, normaliser: f64) -> HeadRun {
        let config = &self.model.config;
        HeadRun {
            norm: self.weights.final_norm,
            head: self.weights.head,
            targets: self.data.targets,
            tokens: self.data.tokens(),
            cap: config.final_logit_softcapping.unwrap_or(0.0) as f32,
            eps: config.rms_norm_eps as f32,
            normaliser,
        }
    }

    /// The head's summed loss `[1]` of `x`, writing the gradient into `dx` when given.
    fn run_head(
        &mut self,
        x: &Tensor<CudaBackend, 3>,
        dx: Option<&Tensor<CudaBackend, 3>>,
        normaliser: f64,
    ) -> Result<Tensor<CudaBackend, 1>> {
        let mut holds = Holds::default();
        holds.add(x);
        if let Some(dx) = dx {
            holds.add(dx);
        }
        let held = holds.hold()?;
        wait_for_burn(&self.device)?;
        let run = self.head_run(normaliser);
        let (cuda, scratch, _) = self.parts();
        let loss = head_loss(cuda, scratch, &run, held[0].ptr, held.get(1).map(|h| h.ptr))?;
        cuda.finish()?;
        Ok(Tensor::from_data([loss as f32], &self.device))
    }
}
