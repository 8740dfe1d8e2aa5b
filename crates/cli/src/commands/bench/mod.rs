//! `ember bench`: LoRA training speed and memory on a random-weight model of a real Gemma
//! shape, measured the way `shared/bench/hf_peft_bench.py` measures transformers + PEFT, so
//! the two can be run side by side on one card.

mod breakdown;
mod decode;
pub(crate) mod shapes;

use std::any::Any;
use std::time::Instant;

use anyhow::Result;
use burn::backend::Autodiff;
use burn::backend::cuda::CudaDevice;
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use ember_lora::{LoraConfig, adapter_parameter_count, add_lora};
use ember_model::bnb::FourBitConfig;
use ember_model::{Family, GemmaForCausalLM, IGNORE_INDEX};
use ember_trainer::config::OptimKind;
use ember_trainer::estimate::{FourBitShape, RunShape, estimate};
use ember_trainer::grads::{Checkpointing, MicroBatch};
use ember_trainer::kernels::TrainKernels;
use ember_trainer::optim::{AdamW, AdamW8bit, AdamWConfig, Optimizer};
use ember_trainer::phases::{Allocated, Phase, Phases};
use ember_trainer::step::{StepSettings, optimizer_step};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};

use crate::device::{DeviceArgs, KernelChoice, TrainTask, dtype_name, run_training_on};
use crate::memory;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// gemma-2b, gemma2-2b, gemma2-9b, gemma3-270m, gemma-7b (random weights, real shapes) or a model directory's config.
    #[arg(long, default_value = "gemma-2b")]
    pub arch: String,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 1024)]
    pub seq: usize,
    /// Timed steps; the reported step time is their median.
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    /// Untimed steps first (the first compiles and tunes GPU kernels).
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// adamw_8bit or adamw_torch.
    #[arg(long, default_value = "adamw_8bit", value_parser = parse_optim)]
    pub optim: OptimKind,
    #[arg(long)]
    pub no_checkpointing: bool,
    /// Keep the checkpointed layer inputs in host memory (`offload_activations`).
    #[arg(long, conflicts_with = "no_checkpointing")]
    pub offload_activations: bool,
    /// QLoRA: the projections in bitsandbytes' NF4 with double quantization (random codes).
    #[arg(long)]
    pub load_in_4bit: bool,
    /// Also time each phase of a step, and the matmuls and attention alone.
    #[arg(long)]
    pub breakdown: bool,
    /// Also measure decoding: `--decode-batch` prompts of this many tokens, then
    /// `--decode-tokens` new ones each.
    #[arg(long)]
    pub decode_prompt: Option<usize>,
    #[arg(long, default_value_t = 256)]
    pub decode_tokens: usize,
    #[arg(long, default_value_t = 1)]
    pub decode_batch: usize,
    /// The card's dense bf16 peak in TFLOP/s, for model FLOPs utilisation (H100/H200 SXM: 989).
    #[arg(long, default_value_t = 989.0)]
    pub peak_tflops: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// What computes the layers and the loss: auto (Ember's CUDA kernels on CUDA, burn's
    /// elsewhere), cuda or burn.
    #[arg(long, value_enum, default_value = "auto")]
    pub kernels: KernelChoice,
    #[command(flatten)]
    pub device: DeviceArgs,
}

fn parse_optim(s: &str) -> Result<OptimKind, String> {
    match s {
        "adamw_8bit" | "adamw8bit" => Ok(OptimKind::AdamW8bit),
        "adamw_torch" | "adamw" => Ok(OptimKind::AdamW),
        _ => Err(format!("unknown optimizer `{s}`; expected adamw_8bit or adamw_torch")),
    }
}

pub fn run(args: Args) -> Result<()> {
    let report = measure(args)?;
    eprintln!("{}", serde_json::to_string_pretty(&report)?);
    println!("{report}");
    Ok(())
}

/// The benchmark's report.
pub fn measure(args: Args) -> Result<Value> {
    args.check()?;
    let device = args.device.clone();
    run_training_on(&device, args.kernels, Bench { args })
}

struct Bench {
    args: Args,
}

impl Args {
    /// Refuses sizes the benchmark cannot run with, before any device work.
    fn check(&self) -> Result<()> {
        for (flag, value, least) in [
            ("--batch", self.batch, 1),
            // One token to predict from and one to predict.
            ("--seq", self.seq, 2),
            ("--steps", self.steps, 1),
            ("--decode-prompt", self.decode_prompt.unwrap_or(1), 1),
            ("--decode-tokens", self.decode_tokens, 1),
            ("--decode-batch", self.decode_batch, 1),
        ] {
            if value < least {
                anyhow::bail!("{flag} {value}: must be at least {least}");
            }
        }
        Ok(())
    }
}

impl TrainTask for Bench {
    type Output = Value;

    fn run<B: Backend>(self, device: B::Device, dtype: DType, kernels: &dyn TrainKernels<B>) -> Result<Value> {
        let a = self.args;
        let config = shapes::resolve(&a.arch)?;
        let cuda_index = (&device as &dyn Any).downcast_ref::<CudaDevice>().map(|d| d.index);
        let driver = cuda_index.and_then(memory::DriverPeak::start);

        let start = Instant::now();
        let four_bit = a.load_in_4bit.then(FourBitConfig::default);
        if four_bit.is_some() && matches!(config.family, Family::Gemma3n | Family::Gemma4) {
            anyhow::bail!(
                "--load-in-4bit covers Gemma, Gemma 2 and Gemma 3 so far, not {}",
                a.arch
            );
        }
        let model = GemmaForCausalLM::<Autodiff<B>>::random(config.clone(), dtype, four_bit.clone(), &device);
        let mut model = add_lora(model, &LoraConfig::seed_recipe(), a.seed)?;
        let _ = B::sync(&device);
        // Pages only the construction used go back before measuring.
        B::memory_cleanup(&device);
        let loaded = memory::allocated(&device);
        let driver_loaded = cuda_index.and_then(memory::driver_used_bytes);
        let build_s = start.elapsed().as_secs_f64();
        let total = config.parameter_count();
        // Expert adapters (Gemma 4's MoE) included.
        let trainable = adapter_parameter_count(&model);
        eprintln!(
            "ember bench: {} ({:.2} B parameters, {:.1} M trainable), batch {} x {}, built in {build_s:.1} s",
            a.arch,
            total as f64 / 1e9,
            trainable as f64 / 1e6,
            a.batch,
            a.seq
        );

        let batch = random_batch(config.vocab_size, a.batch, a.seq, a.seed);
        // What `ember train` would estimate for this run, beside what it measures.
        let run = RunShape {
            batch: a.batch,
            seq: a.seq,
            optim: a.optim,
            checkpointing: !a.no_checkpointing,
            offload: a.offload_activations,
            four_bit: four_bit.as_ref().map(|c| FourBitShape {
                double_quant: c.double_quant,
            }),
        };
        let estimate = estimate(&config, &LoraConfig::seed_recipe(), run, dtype, kernels)?;
        let adamw = AdamWConfig::default();
        let mut optimizer: Box<dyn Optimizer<B>> = match a.optim {
            OptimKind::AdamW => Box::new(AdamW::new(adamw)),
            OptimKind::AdamW8bit => Box::new(AdamW8bit::new(adamw)),
        };
        let mut settings = StepSettings {
            max_grad_norm: Some(1.0),
            checkpointing: match a.no_checkpointing {
                true => Checkpointing::Off,
                false => Checkpointing::Layers {
                    offload: a.offload_activations,
                },
            },
            profile: false,
            memory_probe: Some(memory::allocated),
        };
        let mut times = Vec::new();
        let mut first_step_s = f64::NAN;
        let mut loss = f64::NAN;
        let mut reserved: Option<u64> = None;
        for step in 0..a.warmup + a.steps {
            let start = Instant::now();
            let outcome;
            (model, outcome) = optimizer_step(
                model,
                std::slice::from_ref(&batch),
                5e-4,
                settings,
                kernels,
                optimizer.as_mut(),
            )?;
            let _ = B::sync(&device);
            let seconds = start.elapsed().as_secs_f64();
            loss = outcome.loss;
            if let Some(now) = memory::allocated(&device) {
                reserved = Some(
                    reserved
                        .unwrap_or(0)
                        .max(now.reserved)
                        .max(memory::reserved_seen(&device)),
                );
            }
            eprintln!("  step {step:>2}: {seconds:.3} s, loss {loss:.4}");
            if step == 0 {
                first_step_s = seconds;
            }
            if step >= a.warmup {
                times.push(seconds);
            }
        }
        times.sort_by(f64::total_cmp);
        let step_s = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
        let tokens_per_s = (a.batch * a.seq) as f64 / step_s;
        // The reference's FLOPs count: forward 2N + input gradient 2N (+ 2N recompute) per token.
        let dense = (total - trainable) as f64;
        let tflops = tokens_per_s * if a.no_checkpointing { 4.0 } else { 6.0 } * dense / 1e12;
        let mut report = json!({
            "impl": "ember",
            "arch": a.arch,
            "batch": a.batch,
            "seq": a.seq,
            "optim": match a.optim { OptimKind::AdamW => "adamw_torch", OptimKind::AdamW8bit => "adamw_8bit" },
            "ckpt": !a.no_checkpointing,
            "offload_activations": a.offload_activations,
            "load_in_4bit": a.load_in_4bit,
            "dtype": dtype_name(dtype),
            "device": B::name(&device),
            "kernels": kernels.name(),
            "build_s": build_s,
            "first_step_s": first_step_s,
            "step_s": step_s,
            "tokens_per_s": tokens_per_s,
            "approx_tflops": tflops,
            "mfu": tflops / a.peak_tflops,
            "allocator_reserved_gib": reserved.map(|r| r as f64 / GIB),
            // Everything the run allocated (burn's reserve at its largest and the kernels' own
            // buffers), without the CUDA context: PyTorch's max_memory_allocated counts the same
            // (this is an upper bound of that count).
            "allocated_gib": reserved.map(|r| (r + kernels.device_bytes()) as f64 / GIB),
            "estimate_gib": estimate.total() as f64 / GIB,
            "driver_peak_gib": driver.as_ref().map(|d| d.peak_bytes() as f64 / GIB),
            "optimizer_state_bytes": optimizer.state_bytes(),
            "memory": memory_report(&MemoryParts {
                loaded,
                driver_loaded,
                optimizer_state: optimizer.state_bytes() as u64,
                // With checkpointing, each decoder layer's input is kept from the forward to its
                // backward, on the device unless offloaded.
                saved_layer_inputs: (!a.no_checkpointing && !a.offload_activations).then(|| {
                    (config.num_hidden_layers() * a.batch * a.seq * config.hidden_size * dtype.size()) as u64
                }),
                kernels_own: kernels.device_bytes(),
            }),
            "trainable": trainable,
            "total": total,
            "loss": loss,
        });
        drop(driver);

        if a.breakdown {
            settings.profile = true;
            kernels.set_profiling(true);
            let mut phases = Phases::default();
            let start = Instant::now();
            for _ in 0..2 {
                let outcome;
                (model, outcome) = optimizer_step(
                    model,
                    std::slice::from_ref(&batch),
                    5e-4,
                    settings,
                    kernels,
                    optimizer.as_mut(),
                )?;
                phases = outcome.phases;
            }
            let profiled_step_s = start.elapsed().as_secs_f64() / 2.0;
            let measured = phases.time.iter().map(|d| d.as_secs_f64()).sum::<f64>();
            report["breakdown"] = json!({
                "profiled_step_s": profiled_step_s,
                "outside_phases_s": profiled_step_s - measured,
            });
            for phase in Phase::ALL {
                report["breakdown"][format!("{}_s", phase.name())] = json!(phases.time(phase).as_secs_f64());
                if let Some(at_end) = phases.memory(phase) {
                    report["memory"]["at_end_of"][phase.name()] = allocated_json(at_end);
                }
            }
            // The kernels' own work by category over the profiled steps (Ember's CUDA kernels).
            let times = kernels.kernel_times();
            kernels.set_profiling(false);
            if !times.is_empty() {
                let per_step: serde_json::Map<String, Value> = times
                    .into_iter()
                    .map(|(category, seconds, flops)| {
                        let tflops = if flops > 0.0 {
                            json!(flops / seconds / 1e12)
                        } else {
                            Value::Null
                        };
                        (category, json!({"s": seconds / 2.0, "tflops": tflops}))
                    })
                    .collect();
                report["breakdown"]["kernels"] = Value::Object(per_step);
            }
            // burn's matmuls and attention timed alone: what its kernels spend inside the layers
            // (the CPU's kernels train with burn's ops).
            if matches!(kernels.name(), "burn" | "cpu") {
                let e = breakdown::estimate::<B>(&config, a.batch, a.seq, !a.no_checkpointing, dtype, &device);
                let layers = (phases.time(Phase::Forward) + phases.time(Phase::Backward)).as_secs_f64();
                report["breakdown"]["alone"] = e.to_json();
                report["breakdown"]["layers_other_s"] = json!(layers - e.layer_gemm_s - e.attention_s);
                report["breakdown"]["head_other_s"] = json!(phases.time(Phase::Head).as_secs_f64() - e.head_gemm_s);
            }
        }
        if let Some(prompt) = a.decode_prompt {
            // With --breakdown, each decoder prints its kernels' times when done.
            kernels.set_profiling(a.breakdown);
            // Adapters folded into the weights, as `ember generate --adapter` decodes.
            let inference = crate::commands::generate::for_generation(burn::module::AutodiffModule::valid(&model))?;
            drop(model);
            report["decode"] = decode::measure(
                &inference,
                kernels,
                a.decode_batch,
                prompt,
                a.decode_tokens,
                a.seed,
                &device,
            )?;
        }
        Ok(report)
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// The terms of a training run's device memory that can be told apart from outside a step.
struct MemoryParts {
    /// burn's allocator once the model and its adapters are on the device.
    loaded: Option<Allocated>,
    /// The card's used memory then (the CUDA context included).
    driver_loaded: Option<u64>,
    optimizer_state: u64,
    saved_layer_inputs: Option<u64>,
    /// What the step's kernels keep outside burn's allocator (Ember's CUDA scratch).
    kernels_own: u64,
}

fn memory_report(parts: &MemoryParts) -> Value {
    let gib = |bytes: u64| bytes as f64 / GIB;
    json!({
        "weights_and_adapters_gib": parts.loaded.map(|l| gib(l.in_use)),
        "reserved_after_load_gib": parts.loaded.map(|l| gib(l.reserved)),
        "driver_after_load_gib": parts.driver_loaded.map(gib),
        "optimizer_state_gib": gib(parts.optimizer_state),
        "saved_layer_inputs_gib": parts.saved_layer_inputs.map(gib),
        "kernels_own_gib": gib(parts.kernels_own),
    })
}

fn allocated_json(a: Allocated) -> Value {
    json!({"in_use_gib": a.in_use as f64 / GIB, "reserved_gib": a.reserved as f64 / GIB})
}

/// Random token ids, every next token trained (the reference uses `labels = input_ids`).
fn random_batch(vocab: usize, batch: usize, seq: usize, seed: u64) -> MicroBatch {
    let mut rng = StdRng::seed_from_u64(seed);
    let input_ids: Vec<i64> = (0..batch * seq).map(|_| rng.random_range(0..vocab as i64)).collect();
    let targets: Vec<i64> = input_ids
        .chunks(seq)
        .flat_map(|row| row[1..].iter().copied().chain([IGNORE_INDEX]))
        .collect();
    MicroBatch {
        batch,
        seq,
        segments: vec![1; batch * seq],
        positions: (0..batch).flat_map(|_| 0..seq as i64).collect(),
        num_trained_tokens: batch * (seq - 1),
        input_ids,
        targets,
        seed,
    }
}
