//! The parity checks of `parity.rs` on burn's WGPU backend: logits, KV-cache decoding and
//! greedy generation against transformers on every fixture model, in f32 and within the CPU's
//! tolerance (1e-4; on lavapipe the worst |Δlogit| measured is 1.5e-5). CI runs them on Mesa's
//! lavapipe, a software Vulkan driver (`ember_testkit::software_wgpu`).

use std::path::Path;

use crate::common::{
    B, MODELS, assert_cached_decoding_matches, assert_greedy_generation_matches, assert_logits_match_on, fixture,
};
use burn::backend::Wgpu;
use burn::backend::wgpu::WgpuDevice;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData};
use ember_model::{attend, matmul_transposed};
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
    assert_as_on_the_cpu(
        &squared_product::<B>(&Default::default()),
        &squared_product::<W>(&device),
    );
}

/// The same kernel's fault in attention: one query row against each head's own keys (no
/// grouping, as in Gemma 7B decoding one token), its scores scaled, masked and soft-maxed.
#[test]
fn one_query_row_attends_as_on_the_cpu_on_wgpu() {
    let Some(device) = lavapipe() else { return };
    fn attention<Bk: Backend>(device: &Bk::Device) -> Vec<f32> {
        let values = |n: usize, a: usize, b: usize| -> Tensor<Bk, 1> {
            let v: Vec<f32> = (0..n).map(|i| (i * a % b) as f32 / (b / 2) as f32 - 1.0).collect();
            Tensor::from_data(v.as_slice(), device)
        };
        let q = values(4 * 16, 37, 101).reshape([1, 4, 1, 16]);
        let k = values(4 * 24 * 16, 53, 97).reshape([1, 4, 24, 16]);
        let v = values(4 * 24 * 16, 29, 89).reshape([1, 4, 24, 16]);
        // Nothing masked but the last two keys (slots of a cache not filled yet).
        let open: Vec<bool> = (0..24).map(|i| i >= 22).collect();
        let mask = Tensor::<Bk, 4, Bool>::from_data(TensorData::new(open, [1, 1, 1, 24]), device);
        attend(q, k, v, mask, 0.25, None).into_data().into_vec::<f32>().unwrap()
    }
    assert_as_on_the_cpu(&attention::<B>(&Default::default()), &attention::<W>(&device));
}

/// `found` (WGPU) within 1e-5 of `expected` (the CPU), relative to each value (at least 1).
fn assert_as_on_the_cpu(expected: &[f32], found: &[f32]) {
    let worst = expected
        .iter()
        .zip(found)
        .map(|(e, f)| (e - f).abs() / e.abs().max(1.0))
        .fold(0f32, f32::max);
    assert!(worst < 1e-5, "relative difference {worst:e}");
}
