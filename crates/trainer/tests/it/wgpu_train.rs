//! A few optimizer steps of the trainer on burn's WGPU backend follow the same run on the CPU
//! (ndarray): the same losses and gradient norms. CI runs this on Mesa's lavapipe, a software
//! Vulkan driver (`ember_testkit::software_wgpu`).

use std::path::Path;

use crate::common::{AD, config_table, run_on};
use burn::backend::{Autodiff, Wgpu};
use ember_testkit::software_wgpu;
use ember_trainer::config::RunConfig;
use ember_trainer::trainer::Start;

type W = Autodiff<Wgpu<f32, i32>>;

/// Max relative difference of a step's loss or gradient norm between WGPU and the CPU. Measured
/// on lavapipe: 2.4e-7 at most, f32 rounding in other kernel orders.
const TOLERANCE: f64 = 1e-5;

#[test]
fn wgpu_training_follows_the_cpu_run() {
    let Some(device) = software_wgpu(Path::new(env!("CARGO_TARGET_TMPDIR"))) else {
        return;
    };
    // The shared test run with 2-sample micro-batches: lavapipe spends most of the time compiling
    // and autotuning kernels, and larger shapes make every autotune trial slower. Four steps with
    // two of warmup: the losses of steps 3 and 4 come after updates computed on WGPU. The
    // default gradient checkpointing runs both the plain and the autodiff backend's kernels.
    let config = |dir: &Path| {
        let mut table = config_table(dir, 4, "adamw_torch", true);
        table["training"]["per_device_train_batch_size"] = 2.into();
        RunConfig::from_table(table, Path::new("test.toml")).unwrap()
    };
    let (cpu_dir, wgpu_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cpu = run_on::<AD>(&config(cpu_dir.path()), Start::Fresh, &Default::default());
    let wgpu = run_on::<W>(&config(wgpu_dir.path()), Start::Fresh, &device);
    assert_eq!(wgpu.len(), cpu.len());
    let relative = |a: f64, b: f64| (a - b).abs() / b.abs();
    for (c, w) in cpu.iter().zip(&wgpu) {
        for (what, on_wgpu, on_cpu) in [("loss", w.loss, c.loss), ("grad norm", w.grad_norm, c.grad_norm)] {
            assert!(
                relative(on_wgpu, on_cpu) < TOLERANCE,
                "step {}: {what} {on_wgpu} on WGPU, {on_cpu} on the CPU\nCPU:  {cpu:?}\nWGPU: {wgpu:?}",
                c.step
            );
        }
    }
}
