//! The parity checks of `parity.rs` on burn's WGPU backend: logits, KV-cache decoding and
//! greedy generation against transformers on every fixture model, in f32 and within the CPU's
//! tolerance (1e-4; on lavapipe the worst |Δlogit| measured is 1.5e-5). CI runs them on Mesa's
//! lavapipe, a software Vulkan driver (`ember_testkit::software_wgpu`).

mod common;

use std::path::Path;

use burn::backend::Wgpu;
use burn::backend::wgpu::WgpuDevice;
use common::{
    MODELS, assert_cached_decoding_matches, assert_greedy_generation_matches, assert_logits_match_on, fixture,
};
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
