//! `ember check-grads`: one micro-batch's loss and every adapter gradient from the chosen
//! training kernels (Ember's CUDA kernels on a CUDA device) against burn's reference kernels on
//! the same device, and against PEFT's when the adapter directory holds PEFT's reference
//! (`fixtures/lora/*/reference.safetensors`). How the GPU path is checked on a GPU machine.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::backend::Autodiff;
use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Tensor};
use ember_lora::{LoraConfig, add_lora, load_adapter, peft_key, projections, projections_mut};
use ember_model::{GemmaForCausalLM, IGNORE_INDEX, LoadOptions, shift_labels};
use ember_trainer::grads::{AdapterGrads, Checkpointing, MicroBatch, accumulate};
use ember_trainer::kernels::{BurnKernels, TrainKernels};
use ember_trainer::optim::{AdamW8bit, AdamWConfig, Optimizer};
use ember_trainer::step::global_norm;
use rand::{Rng, SeedableRng, rngs::StdRng};
use safetensors::SafeTensors;
use serde_json::{Value, json};

use super::bench::shapes;
use crate::device::{DeviceArgs, KernelChoice, TrainTask, dtype_name, run_training_on};
use crate::ranges;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A model directory or GGUF file, or a built-in shape with random weights (gemma-2b,
    /// gemma2-2b, gemma3-270m, gemma-7b).
    #[arg(long)]
    pub model: String,
    /// A PEFT adapter directory; without one, the seed recipe's adapter (r = 16 on all seven
    /// projections) with B drawn non-zero.
    /// With PEFT's `reference.safetensors` beside it (the fixtures), the batch is the model's
    /// reference batch and the loss and gradients are compared with PEFT's too.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    /// Token layout of a random batch: plain (one sample a row), packed or padded.
    #[arg(long, default_value = "packed")]
    pub layout: String,
    /// Largest relative gradient difference accepted between the two kernel sets.
    #[arg(long, default_value_t = 1e-3, value_parser = ranges::non_negative::<f64>)]
    pub tolerance: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sets every adapter's LoRA dropout: both kernel sets then draw the same masks (the
    /// trainer seeds each layer's), which PEFT cannot, so PEFT's reference is not compared.
    #[arg(long)]
    pub lora_dropout: Option<f64>,
    /// Skip the comparison with burn's kernels (their first compile on a fresh GPU machine takes
    /// minutes); PEFT's reference, when there is one, is still compared.
    #[arg(long)]
    pub skip_burn: bool,
    /// Checkpoint as `offload_activations` does: kept layer inputs off the device, and kernels
    /// favouring memory (Ember's CUDA kernels then run each layer in passes of rows).
    #[arg(long)]
    pub offload_activations: bool,
    #[arg(long, value_enum, default_value = "auto")]
    pub kernels: KernelChoice,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: Args) -> Result<()> {
    // A random batch needs a token to predict from and one to predict in every row.
    for (flag, value, least) in [("--batch", args.batch, 1), ("--seq", args.seq, 2)] {
        if value < least {
            bail!("{flag} {value}: must be at least {least}");
        }
    }
    if let Some(p) = args.lora_dropout
        && !(0.0..1.0).contains(&p)
    {
        bail!("--lora-dropout {p}: must be in [0, 1)");
    }
    let device = args.device.clone();
    let kernels = args.kernels;
    let report = run_training_on(&device, kernels, Check { args })?;
    println!("{report}");
    if report["pass"] != Value::Bool(true) {
        bail!("the kernels' gradients differ beyond the tolerance");
    }
    Ok(())
}

struct Check {
    args: Args,
}

impl TrainTask for Check {
    type Output = Value;

    fn run<B: Backend>(self, device: B::Device, dtype: DType, kernels: &dyn TrainKernels<B>) -> Result<Value> {
        let a = &self.args;
        let dir = Path::new(&a.model);
        let options = LoadOptions::new(dtype);
        let base = if dir.exists() {
            GemmaForCausalLM::<Autodiff<B>>::load(dir, &options, &device)?
        } else {
            GemmaForCausalLM::random(shapes::resolve(&a.model)?, dtype, None, &device)
        };
        let reference = a
            .adapter
            .as_ref()
            .map(|d| d.join("reference.safetensors"))
            .filter(|p| p.exists());
        let mut model = match &a.adapter {
            Some(adapter) => load_adapter(base, adapter)?.0,
            None => random_adapter(add_lora(base, &LoraConfig::seed_recipe(), a.seed)?, &device),
        };
        if let Some(p) = a.lora_dropout {
            for (i, layer) in model.model.layers.iter_mut().enumerate() {
                for (_, linear) in projections_mut(i, layer) {
                    if let Some(lora) = linear.lora.as_mut() {
                        lora.dropout = p;
                    }
                }
            }
        }
        let batch = match &reference {
            Some(_) => reference_batch(&dir.join("reference.safetensors"))?,
            None => random_batch(model.config.vocab_size, a.batch, a.seq, &a.layout, a.seed)?,
        };
        let normaliser = batch.num_trained_tokens.max(1) as f64;
        let run_with = |k: &dyn TrainKernels<B>, offload: bool| -> Result<(f64, AdapterGrads<B>)> {
            let mut grads = AdapterGrads::new();
            let layers = Checkpointing::Layers { offload };
            let loss = accumulate(&model, &batch, normaliser, layers, k, &mut grads, None, None)?;
            Ok((loss / normaliser, grads))
        };
        let run = |k: &dyn TrainKernels<B>| run_with(k, a.offload_activations);
        let started = std::time::Instant::now();
        let (loss, grads) = run(kernels)?;
        eprintln!(
            "ember: {} kernels: loss {loss:.6} in {:.1} s (first use compiles)",
            kernels.name(),
            started.elapsed().as_secs_f64()
        );
        let mut report = json!({
            "model": a.model,
            "dtype": dtype_name(dtype),
            "lora_dropout": a.lora_dropout.unwrap_or(0.0),
            "offload_activations": a.offload_activations,
            "kernels": kernels.name(),
            "tokens": batch.batch * batch.seq,
            "loss": loss,
            "grads": grads.len(),
        });
        let mut pass = loss.is_finite();
        if a.offload_activations {
            // Favouring memory changes only how the kernels cut the work (passes of rows,
            // chunks): the same kernels favouring speed are the reference.
            let (loss_speed, grads_speed) = run_with(kernels, false)?;
            let (worst_key, worst) = worst_difference(&grads, &grads_speed)?;
            report["loss_speed"] = json!(loss_speed);
            report["grad_rel_diff_speed_max"] = json!(worst);
            report["grad_rel_diff_speed_key"] = json!(worst_key);
            pass &= worst <= a.tolerance && ((loss - loss_speed) / loss_speed).abs() <= a.tolerance;
        }
        if !a.skip_burn {
            let (loss_ref, grads_ref) = run(&BurnKernels)?;
            let (worst_key, worst) = worst_difference(&grads, &grads_ref)?;
            report["loss_burn"] = json!(loss_ref);
            report["loss_rel_diff"] = json!(((loss - loss_ref) / loss_ref).abs());
            report["grad_rel_diff_max"] = json!(worst);
            report["grad_rel_diff_key"] = json!(worst_key);
            pass &= worst <= a.tolerance;
        }
        // The optimizer step on these gradients: the kernels' norm against the reference's, and
        // two 8-bit AdamW steps (the second from non-zero state) fused against burn's ops.
        let norm = kernels.global_norm(&grads)?;
        let norm_ref = global_norm(&grads);
        let optimizer_equal = adamw8bit_equal(&model, &grads, kernels)?;
        report["grad_norm"] = json!(norm);
        report["grad_norm_rel_diff"] = json!(((norm - norm_ref) / norm_ref).abs());
        report["adamw8bit_bit_exact"] = json!(optimizer_equal);
        pass &= optimizer_equal && ((norm - norm_ref) / norm_ref).abs() <= 1e-5;
        let dropout = a.lora_dropout.is_some_and(|p| p > 0.0);
        if let Some(path) = reference.as_ref().filter(|_| !dropout) {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let peft = SafeTensors::deserialize(&bytes)?;
            let peft_loss = f32s(&peft, "loss")?[0] as f64;
            let mut peft_grads = Vec::new();
            for key in grads.keys() {
                peft_grads.push((key.clone(), f32s(&peft, &format!("{key}.grad"))?));
            }
            let worst_peft = peft_grads
                .iter()
                .map(|(key, reference)| relative_error(&values(&grads[key]), reference))
                .fold(0.0, f64::max);
            report["loss_peft"] = json!(peft_loss);
            report["grad_rel_diff_peft_max"] = json!(worst_peft);
            pass &= worst_peft <= a.tolerance.max(1e-4) * 10.0;
        }
        report["pass"] = json!(pass);
        eprintln!("{}", serde_json::to_string_pretty(&report)?);
        Ok(report)
    }
}

/// Whether two 8-bit AdamW steps with the kernels' fused update (when they have one) give the
/// bits of burn's ops: parameters after each step and the final state.
fn adamw8bit_equal<B: Backend>(
    model: &GemmaForCausalLM<Autodiff<B>>,
    grads: &AdapterGrads<B>,
    kernels: &dyn TrainKernels<B>,
) -> Result<bool> {
    let mut params = Vec::new();
    for (i, layer) in model.model.layers.iter().enumerate() {
        for (path, linear) in projections(i, layer) {
            let Some(lora) = &linear.lora else { continue };
            for (matrix, param) in [('A', &lora.a), ('B', &lora.b)] {
                let key = peft_key(&path, matrix);
                if let Some(grad) = grads.get(&key) {
                    params.push((key, param.val().inner().flatten(0, 1), grad.clone().flatten(0, 1)));
                }
            }
        }
    }
    let (mut fused, mut reference) = (
        AdamW8bit::<B>::new(AdamWConfig::default()),
        AdamW8bit::<B>::new(AdamWConfig::default()),
    );
    let (mut a, mut b) = (params.clone(), params);
    let mut equal = true;
    for _ in 0..2 {
        let new_a = fused.update_many(a.clone(), 1e-3, 0.5, kernels.blockwise_adam());
        let new_b = reference.update_many(b.clone(), 1e-3, 0.5, None);
        for (x, y) in new_a.iter().zip(&new_b) {
            equal &= x.clone().into_data().as_bytes() == y.clone().into_data().as_bytes();
        }
        for (item, new) in a.iter_mut().zip(new_a) {
            item.1 = new;
        }
        for (item, new) in b.iter_mut().zip(new_b) {
            item.1 = new;
        }
    }
    for ((_, x), (_, y)) in fused.state().iter().zip(reference.state().iter()) {
        equal &= x.as_bytes() == y.as_bytes();
    }
    Ok(equal)
}

/// The adapter PEFT initialises, with B drawn too: with B = 0 every A gradient is zero.
fn random_adapter<B: Backend>(
    mut model: GemmaForCausalLM<Autodiff<B>>,
    device: &B::Device,
) -> GemmaForCausalLM<Autodiff<B>> {
    for (i, layer) in model.model.layers.iter_mut().enumerate() {
        for (_, linear) in projections_mut(i, layer) {
            if let Some(lora) = linear.lora.as_mut() {
                let shape = lora.b.val().dims();
                let b = Tensor::random(shape, Distribution::Normal(0.0, 0.02), device).require_grad();
                lora.b = Param::initialized(lora.b.id, Tensor::from_inner(b));
            }
        }
    }
    model
}

fn random_batch(vocab: usize, batch: usize, seq: usize, layout: &str, seed: u64) -> Result<MicroBatch> {
    let mut rng = StdRng::seed_from_u64(seed);
    let input_ids: Vec<i64> = (0..batch * seq).map(|_| rng.random_range(0..vocab as i64)).collect();
    let mut segments = vec![1i64; batch * seq];
    let mut positions: Vec<i64> = (0..batch).flat_map(|_| 0..seq as i64).collect();
    match layout {
        "plain" => {}
        "packed" | "padded" => {
            for row in 0..batch {
                // Three samples of random lengths; with padding, the third is padding.
                let mut cuts = [rng.random_range(1..seq), rng.random_range(1..seq)];
                cuts.sort();
                for t in 0..seq {
                    let sample = 1 + (t >= cuts[0]) as i64 + (t >= cuts[1]) as i64;
                    let start = [0, cuts[0], cuts[1]][sample as usize - 1];
                    segments[row * seq + t] = if layout == "padded" && sample == 3 { 0 } else { sample };
                    positions[row * seq + t] = if segments[row * seq + t] == 0 {
                        0
                    } else {
                        (t - start) as i64
                    };
                }
            }
        }
        other => bail!("unknown --layout `{other}`; expected plain, packed or padded"),
    }
    let labels: Vec<i64> = input_ids
        .iter()
        .zip(&segments)
        .map(|(&id, &s)| if s == 0 { IGNORE_INDEX } else { id })
        .collect();
    let mut targets = shift_labels(&labels, seq);
    // A target across a sample boundary is another sample's first token: not trained.
    for i in 0..batch * seq {
        if (i + 1) % seq != 0 && segments[i + 1] != segments[i] {
            targets[i] = IGNORE_INDEX;
        }
    }
    Ok(MicroBatch {
        batch,
        seq,
        num_trained_tokens: targets.iter().filter(|&&t| t != IGNORE_INDEX).count(),
        input_ids,
        segments,
        positions,
        targets,
        seed,
    })
}

/// The fixture batch (`input_ids`, `attention_mask`) that PEFT's reference used, labels = ids.
fn reference_batch(path: &Path) -> Result<MicroBatch> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)?;
    let ints = |name: &str| -> Result<Vec<i64>> {
        Ok(st
            .tensor(name)?
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect())
    };
    let (ids, mask) = (ints("input_ids")?, ints("attention_mask")?);
    let shape = st.tensor("input_ids")?.shape().to_vec();
    let (batch, seq) = (shape[0], shape[1]);
    let labels: Vec<i64> = ids
        .iter()
        .zip(&mask)
        .map(|(&id, &m)| if m == 0 { IGNORE_INDEX } else { id })
        .collect();
    let targets = shift_labels(&labels, seq);
    Ok(MicroBatch {
        batch,
        seq,
        num_trained_tokens: targets.iter().filter(|&&t| t != IGNORE_INDEX).count(),
        input_ids: ids,
        segments: mask,
        positions: (0..batch).flat_map(|_| 0..seq as i64).collect(),
        targets,
        seed: 0,
    })
}

fn f32s(st: &SafeTensors, name: &str) -> Result<Vec<f32>> {
    Ok(st
        .tensor(name)
        .with_context(|| format!("the reference has no `{name}`"))?
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect())
}

fn values<B: Backend>(t: &Tensor<B, 2>) -> Vec<f32> {
    t.clone()
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default()
}

/// `‖a − b‖ / ‖b‖`; NaN anywhere is infinitely wrong.
fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.iter().chain(b).any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
    diff / norm.max(1e-30)
}

fn worst_difference<B: Backend>(grads: &AdapterGrads<B>, reference: &AdapterGrads<B>) -> Result<(String, f64)> {
    if grads.len() != reference.len() {
        bail!("{} gradients against the reference's {}", grads.len(), reference.len());
    }
    let mut worst = (String::new(), 0.0);
    for (key, g) in grads {
        let r = reference
            .get(key)
            .with_context(|| format!("the reference has no gradient for {key}"))?;
        let err = relative_error(&values(g), &values(r));
        #[allow(clippy::neg_cmp_op_on_partial_ord)] // a NaN error must become the worst
        if !(err <= worst.1) {
            worst = (key.clone(), err);
        }
    }
    Ok(worst)
}
