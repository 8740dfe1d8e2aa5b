//! The parity checks of `parity.rs` on burn's WGPU backend: logits, KV-cache decoding and
//! greedy generation against transformers on every fixture model, in f32 and within the CPU's
//! tolerance (1e-4; on lavapipe the worst |Δlogit| measured is 1.5e-5). CI runs them on Mesa's
//! lavapipe, a software Vulkan driver (`ember_testkit::software_wgpu`).

mod common;

use std::path::Path;

use burn::backend::Wgpu;
use burn::backend::wgpu::WgpuDevice;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use common::{
    B, MODELS, assert_cached_decoding_matches, assert_greedy_generation_matches, assert_logits_match_on, fixture,
};
use ember_model::matmul_transposed;
use ember_testkit::software_wgpu;

type W = Wgpu<f32, i32>;

fn lavapipe() -> Option<WgpuDevice> {
    software_wgpu(Path::new(env!("CARGO_TARGET_TMPDIR")))
}

#[test]
fn logits_match_transformers_on_wgpu() {
    let Some(device) = lavapipe() else { return };
    for name in MODELS {
        assert_logits_match_on::<W>(&fixture(name), name, &device);
    }
}

#[test]
fn kv_cache_decoding_matches_transformers_on_wgpu() {
    let Some(device) = lavapipe() else { return };
    for name in MODELS {
        assert_cached_decoding_matches::<W>(name, &device);
    }
}

#[test]
fn greedy_generation_matches_transformers_on_wgpu() {
    let Some(device) = lavapipe() else { return };
    for name in MODELS {
        assert_greedy_generation_matches::<W>(name, &device);
    }
}

/// One row times a transposed weight, then an elementwise op: what burn's fusion runs in a
/// vector-matrix kernel that reads the transposed weight as if contiguous (issue 18: Gemma 3n
/// decoded 2.2 off), and [`matmul_transposed`] avoids.
#[test]
fn a_row_times_a_transposed_weight_matches_the_cpu_on_wgpu() {
    let Some(device) = lavapipe() else { return };
    fn squared_product<Bk: Backend>(device: &Bk::Device) -> Vec<f32> {
        let x: Vec<f32> = (0..64).map(|i| (i * 37 % 101) as f32 / 50.0 - 1.0).collect();
        let w: Vec<f32> = (0..128 * 64).map(|i| (i * 53 % 97) as f32 / 48.0 - 1.0).collect();
        let x = Tensor::<Bk, 1>::from_data(x.as_slice(), device).reshape([1, 64]);
        let w = Tensor::<Bk, 1>::from_data(w.as_slice(), device).reshape([128, 64]);
        let product = matmul_transposed(x, w).square();
        product.into_data().into_vec::<f32>().unwrap()
    }
    let expected = squared_product::<B>(&Default::default());
    let found = squared_product::<W>(&device);
    let worst = expected
        .iter()
        .zip(&found)
        .map(|(e, f)| (e - f).abs() / e.abs().max(1.0))
        .fold(0f32, f32::max);
    assert!(worst < 1e-5, "relative difference {worst:e}");
}
