//! `ember compare`: a model's logits against the ones transformers computed for the same batch,
//! to check a checkpoint (or a backend, or a dtype) before trusting it. The reference is written
//! in Python, e.g.:
//!
//! ```python
//! batch = tok(["The capital of France is", "Hi"], return_tensors="pt", padding=True)
//! logits = model(**batch).logits.float()
//! safetensors.torch.save_file({"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
//!                              "logits": logits.contiguous()}, "reference.safetensors")
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use ember_model::{GemmaForCausalLM, IGNORE_INDEX, LogitsReference};
use ember_trainer::grads::MicroBatch;
use ember_trainer::kernels::{Favour, TrainKernels, forward_layers};

use super::generate::{decoder, load_model, open_model};
use crate::device::{DeviceArgs, KernelChoice, TrainTask, dtype_name, run_training_on};
use crate::four_bit::FourBitArgs;
use crate::ranges;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint directory or GGUF file.
    #[arg(long)]
    pub model: PathBuf,
    /// A LoRA adapter directory (PEFT format) to run the model with.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// safetensors with `input_ids`, `attention_mask` (I64) and `logits` (F32) from transformers.
    #[arg(long)]
    pub reference: PathBuf,
    /// Largest |Δlogit| accepted; the command fails above it.
    #[arg(long, default_value_t = 1e-3, value_parser = ranges::non_negative::<f32>)]
    pub tolerance: f32,
    /// What computes the logits: burn's ops (the model's forward, then through the KV cache),
    /// cuda (the training step's CUDA kernels on the full sequences, then Ember's CUDA decoder
    /// through its KV cache), or auto (on the CPU: burn's ops on the full sequences, then
    /// Ember's CPU decoder; on CUDA, cuda).
    #[arg(long, value_enum, default_value = "burn")]
    pub kernels: KernelChoice,
    #[command(flatten)]
    pub four_bit: FourBitArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: Args) -> Result<()> {
    run_training_on(&args.device.clone(), args.kernels, args)
}

impl TrainTask for Args {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device, dtype: DType, kernels: &dyn TrainKernels<B>) -> Result<()> {
        let reference = LogitsReference::read(&self.reference)?;
        let model = load_model::<B>(
            &open_model(&self.model)?,
            self.adapter.as_deref(),
            dtype,
            self.four_bit.config(),
            &device,
        )?;
        let context = || format!("comparing with {}", self.reference.display());
        let found = match self.kernels {
            KernelChoice::Burn => reference.compare(&model, &device).with_context(context)?,
            _ => {
                let logits = kernel_logits(&model, kernels, &reference).with_context(context)?;
                let mut found = reference.compare_logits(&logits).with_context(context)?;
                let (seq, prefix) = (reference.seq, reference.seq.min(5));
                let mut steps = decoder(&model, kernels, &device, seq, prefix).with_context(context)?;
                found.cached_max_abs_diff = reference.compare_decoder(&mut *steps).with_context(context)?;
                found
            }
        };
        let cached = found
            .cached_max_abs_diff
            .map_or("no row without padding".into(), |d| format!("{d:.3e}"));
        println!(
            "{}: max |Δlogit| {:.3e} over {} positions, through the KV cache {cached}; \
             same top token at {}/{} ({})",
            self.model.display(),
            found.max_abs_diff,
            found.positions,
            found.same_argmax,
            found.positions,
            dtype_name(dtype),
        );
        let worst = found.worst();
        // Written so that NaN fails: no comparison with NaN is true.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        if !(worst <= self.tolerance) {
            bail!(
                "the logits differ by {worst:.3e}, more than --tolerance {:e}",
                self.tolerance
            );
        }
        if !found.all_argmax_agree() {
            bail!(
                "the top token differs from the reference's at {} of {} positions",
                found.positions - found.same_argmax,
                found.positions
            );
        }
        Ok(())
    }
}

/// The reference batch's logits from `kernels`' layers and head, as the training step runs them.
fn kernel_logits<B: Backend>(
    model: &GemmaForCausalLM<B>,
    kernels: &dyn TrainKernels<B>,
    reference: &LogitsReference,
) -> Result<Vec<f32>> {
    if let Some(why) = kernels.unsupported(model) {
        bail!("the {} kernels cannot run this model: {why}", kernels.name());
    }
    let (batch, seq) = (reference.batch, reference.seq);
    let micro = MicroBatch {
        batch,
        seq,
        input_ids: reference.input_ids.clone(),
        segments: reference.attention_mask.clone(),
        positions: (0..batch).flat_map(|_| 0..seq as i64).collect(),
        targets: vec![IGNORE_INDEX; batch * seq],
        num_trained_tokens: 0,
        seed: 0,
    };
    let mut step = kernels.prepare(model, &micro, Favour::Memory)?;
    let x = forward_layers(model, step.as_mut(), &micro)?;
    step.logits(x)?
        .cast(DType::F32)
        .into_data()
        .into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("cannot read the logits back: {e:?}"))
}
