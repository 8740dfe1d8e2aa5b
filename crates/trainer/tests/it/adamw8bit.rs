//! `AdamW8bit` against bitsandbytes 0.50.2's `AdamW8bit` on CUDA (fixture
//! `fixtures/optim/adamw8bit.safetensors`, made by `fixtures/make_bnb_fixtures.py`): three tensors
//! (5000 elements: 8-bit with a partial last block; 4096: 8-bit, zero gradient at step 1 and one
//! block that stays zero; 1000: f32 state), five steps on given gradients with NaN/±inf and -0.0
//! entries, a changing learning rate, weight decay 0.01.
//!
//! bnb's CUDA library is built with `--use_fast_math` (approximate division, square root and
//! `__powf`, fused multiply-adds), which Ember's burn ops cannot reproduce bit for bit; the
//! differences are a few f32 ulps in the moments and ~1e-5 relative in the bias corrections at
//! the first steps (`1 - β2^t` cancels). Quantized codes are nonetheless the same except where a
//! value lies within an ulp of the midpoint between two codes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn::tensor::{DType, Tensor, TensorData};
use ember_testkit::{max_abs_diff, nan_max};
use ember_trainer::optim::{AdamW, AdamW8bit, AdamWConfig, MIN_8BIT_SIZE, Optimizer, StateTensors};
use safetensors::{Dtype, SafeTensors};

type B = NdArray<f32>;

const NAMES: [&str; 3] = ["big", "lora_a", "small"];
const STEPS: usize = 5;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Fixture {
    tensors: HashMap<String, TensorData>,
    lrs: Vec<f64>,
    config: AdamWConfig,
}

impl Fixture {
    fn load() -> Self {
        let bytes = std::fs::read(repo().join("fixtures/optim/adamw8bit.safetensors")).unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = header.metadata().clone().unwrap();
        let json = |key: &str| serde_json::from_str::<serde_json::Value>(&meta[key]).unwrap();
        let betas = json("betas");
        let config = AdamWConfig {
            beta1: betas[0].as_f64().unwrap(),
            beta2: betas[1].as_f64().unwrap(),
            eps: json("eps").as_f64().unwrap(),
            weight_decay: json("weight_decay").as_f64().unwrap(),
        };
        let lrs = json("lrs")
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let n = view.shape().iter().product::<usize>();
                let data = view.data();
                let data = match view.dtype() {
                    Dtype::F32 => TensorData::new(
                        data.chunks_exact(4)
                            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                            .collect(),
                        [n],
                    ),
                    Dtype::U8 => TensorData::new(data.to_vec(), [n]),
                    Dtype::I64 => TensorData::new(
                        data.chunks_exact(8)
                            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                            .collect(),
                        [n],
                    ),
                    other => panic!("unexpected dtype {other:?}"),
                };
                (name, data)
            })
            .collect();
        Self { tensors, lrs, config }
    }

    fn data(&self, key: &str) -> TensorData {
        self.tensors
            .get(key)
            .unwrap_or_else(|| panic!("fixture has no {key}"))
            .clone()
    }

    fn tensor(&self, key: &str) -> Tensor<B, 1> {
        Tensor::from_data(self.data(key), &Default::default())
    }

    fn floats(&self, key: &str) -> Vec<f32> {
        self.data(key).into_vec().unwrap()
    }

    /// bnb's state of `name` after `step` (0: its initial all-zero state), as Ember's keys.
    fn state_after(&self, name: &str, step: usize) -> StateTensors {
        let n = self.data(&format!("{name}.init")).num_elements();
        let blocks = n.div_ceil(256);
        let key = |k: &str| format!("{name}.{k}");
        let mut out = vec![(key("step"), TensorData::new(vec![step as i64], [1]))];
        for (k, len) in [("state1", n), ("state2", n), ("absmax1", blocks), ("absmax2", blocks)] {
            let data = if step == 0 {
                match k {
                    "state1" | "state2" => TensorData::new(vec![0u8; len], [len]),
                    _ => TensorData::new(vec![0f32; len], [len]),
                }
            } else {
                self.data(&format!("{name}.{k}.{step}"))
            };
            out.push((key(k), data));
        }
        out
    }
}

fn floats(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data().into_vec().unwrap()
}

fn state_map(state: StateTensors) -> HashMap<String, TensorData> {
    state.into_iter().collect()
}

/// The parameters of bnb's run before step `t` (1-based) and after it.
fn bnb_params(fx: &Fixture, name: &str, t: usize) -> (Vec<f32>, Vec<f32>) {
    let before = if t == 1 {
        format!("{name}.init")
    } else {
        format!("{name}.param.{}", t - 1)
    };
    (fx.floats(&before), fx.floats(&format!("{name}.param.{t}")))
}

/// The precision bnb's fast-math kernel leaves of one step: 4 ulps of the parameter plus 1e-4
/// of the step's change (the bias corrections' `__powf`, relative error up to ~3e-5 here).
fn step_tolerance(before: f32, after: f32) -> f32 {
    4.0 * f32::EPSILON * before.abs().max(after.abs()) + 1e-4 * (after - before).abs()
}

/// Runs `opt` over the fixture's steps from bnb's initial parameters, calling `check` with the
/// step and each tensor's parameters after it.
fn run(fx: &Fixture, opt: &mut impl Optimizer<B>, mut check: impl FnMut(usize, &str, &[f32])) {
    let mut params: HashMap<&str, Tensor<B, 1>> = NAMES.iter().map(|&n| (n, fx.tensor(&format!("{n}.init")))).collect();
    for (t, &lr) in (1..=STEPS).zip(&fx.lrs) {
        for name in NAMES {
            let p = params.remove(name).unwrap();
            let p = opt.update(name, p, fx.tensor(&format!("{name}.grad.{t}")), lr);
            check(t, name, &floats(p.clone()));
            params.insert(name, p);
        }
    }
}

/// Codes of `ours` and `bnb` that differ; each must be a neighbour of bnb's (a value within
/// rounding of the midpoint between two codes).
fn differing_codes(ours: &TensorData, bnb: &TensorData) -> usize {
    let (ours, bnb): (Vec<u8>, Vec<u8>) = (ours.clone().into_vec().unwrap(), bnb.clone().into_vec().unwrap());
    assert_eq!(ours.len(), bnb.len());
    let differing: Vec<(u8, u8)> = ours.into_iter().zip(bnb).filter(|(a, b)| a != b).collect();
    assert!(differing.iter().all(|(a, b)| a.abs_diff(*b) == 1), "{differing:?}");
    differing.len()
}

/// Largest relative difference of two absmax vectors; 1 ulp is up to 1.2e-7.
fn absmax_rel_diff(ours: &TensorData, bnb: &TensorData) -> f32 {
    let (ours, bnb): (Vec<f32>, Vec<f32>) = (ours.clone().into_vec().unwrap(), bnb.clone().into_vec().unwrap());
    assert_eq!(ours.len(), bnb.len());
    ours.iter()
        .zip(&bnb)
        .map(|(a, b)| if a == b { 0.0 } else { (a - b).abs() / b.abs() })
        .fold(0.0, nan_max)
}

#[test]
fn tracks_bitsandbytes_within_its_fast_math_error() {
    // Free run: Ember's own state throughout. The deviation from bnb may grow by one step's
    // tolerance per step; it stays far below the error 8-bit states themselves cause, measured
    // as the distance between bnb and f32-state AdamW.
    let fx = Fixture::load();
    let mut f32_params = HashMap::new();
    run(&fx, &mut AdamW::<B>::new(fx.config), |t, name, p| {
        f32_params.insert((t, name.to_string()), p.to_vec());
    });
    let mut budget: HashMap<String, Vec<f32>> = HashMap::new();
    run(&fx, &mut AdamW8bit::<B>::new(fx.config), |t, name, ours| {
        let (before, bnb) = bnb_params(&fx, name, t);
        let budget = budget.entry(name.to_string()).or_insert_with(|| vec![0.0; bnb.len()]);
        let mut worst = 0.0f32;
        for i in 0..bnb.len() {
            budget[i] += step_tolerance(before[i], bnb[i]);
            worst = worst.max((ours[i] - bnb[i]).abs() / budget[i]);
        }
        let dev = max_abs_diff(ours, &bnb);
        // Where a gradient was not finite, f32 AdamW's parameter is NaN (bnb's 8-bit kernel skips
        // the element): the quantization error is measured on the other elements.
        let quant = f32_params[&(t, name.to_string())]
            .iter()
            .zip(&bnb)
            .filter(|(a, b)| a.is_finite() && b.is_finite())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        eprintln!(
            "step {t} {name:6}: max |ember - bnb| {dev:.2e} ({worst:.2} of the budget), max |f32 AdamW - bnb| {quant:.2e}"
        );
        assert!(worst <= 1.0, "step {t} `{name}`: {worst} of the fast-math budget");
        // From step 3 on, the update reads moments that went through 8 bits (at step 2 they were
        // still exact for `lora_a`, whose first gradient is zero).
        if name != "small" && t >= 3 {
            assert!(
                dev < 0.01 * quant,
                "step {t} `{name}`: {dev} vs quantization error {quant}"
            );
        }
    });
}

#[test]
fn each_step_reproduces_bitsandbytes_from_its_own_state() {
    // bnb's state and parameters before each step, loaded into Ember: one step gives bnb's
    // parameters within one step's tolerance, its absmax within 2 ulps and its codes.
    let fx = Fixture::load();
    let device = Default::default();
    for name in ["big", "lora_a"] {
        for t in 1..=STEPS {
            let (before, bnb) = bnb_params(&fx, name, t);
            let mut opt = AdamW8bit::<B>::new(fx.config);
            opt.load_state(fx.state_after(name, t - 1), &device).unwrap();
            let p = Tensor::from_data(TensorData::new(before.clone(), [before.len()]), &device);
            let ours = floats(opt.update(name, p, fx.tensor(&format!("{name}.grad.{t}")), fx.lrs[t - 1]));
            for i in 0..bnb.len() {
                let tol = step_tolerance(before[i], bnb[i]);
                assert!(
                    (ours[i] - bnb[i]).abs() <= tol,
                    "step {t} `{name}`[{i}]: {} vs {}",
                    ours[i],
                    bnb[i]
                );
            }
            let state = state_map(opt.state());
            let key = |k: &str| format!("{name}.{k}");
            let bnb_key = |k: &str| format!("{name}.{k}.{t}");
            let codes: usize = ["state1", "state2"]
                .iter()
                .map(|k| differing_codes(&state[&key(k)], &fx.data(&bnb_key(k))))
                .sum();
            let absmax = ["absmax1", "absmax2"]
                .iter()
                .map(|k| absmax_rel_diff(&state[&key(k)], &fx.data(&bnb_key(k))))
                .fold(0.0, nan_max);
            eprintln!(
                "step {t} {name:6}: {codes} of {} codes differ, absmax within {absmax:.1e}",
                2 * bnb.len()
            );
            assert!(codes <= 2, "step {t} `{name}`: {codes} codes differ");
            assert!(absmax <= 2.4e-7, "step {t} `{name}`: absmax differs by {absmax}");
        }
    }
}

#[test]
fn final_state_is_bitsandbytes_state() {
    let fx = Fixture::load();
    let mut opt = AdamW8bit::<B>::new(fx.config);
    run(&fx, &mut opt, |_, _, _| {});
    let state = state_map(opt.state());
    for name in NAMES {
        let key = |k: &str| format!("{name}.{k}");
        assert_eq!(state[&key("step")], fx.data(&key("step")));
        if name == "small" {
            // f32 moments: only the fast-math rounding of five multiply-adds apart.
            for k in ["state1", "state2"] {
                let (ours, bnb): (Vec<f32>, Vec<f32>) =
                    (state[&key(k)].clone().into_vec().unwrap(), fx.floats(&key(k)));
                let scale = bnb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                assert!(max_abs_diff(&ours, &bnb) <= 8.0 * f32::EPSILON * scale, "`{name}.{k}`");
            }
            continue;
        }
        let codes: usize = ["state1", "state2"]
            .iter()
            .map(|k| differing_codes(&state[&key(k)], &fx.data(&key(k))))
            .sum();
        let absmax = ["absmax1", "absmax2"]
            .iter()
            .map(|k| absmax_rel_diff(&state[&key(k)], &fx.data(&key(k))))
            .fold(0.0, nan_max);
        eprintln!("`{name}` after {STEPS} steps: {codes} codes differ from bnb's, absmax within {absmax:.1e}");
        assert!(codes <= 2, "`{name}`: {codes} codes differ");
        assert!(absmax <= 2.4e-7, "`{name}`: absmax differs by {absmax}");
    }
}

fn save(state: &StateTensors, path: &Path) {
    let views = state.iter().map(|(name, data)| {
        let dtype = match data.dtype {
            DType::F32 => Dtype::F32,
            DType::U8 => Dtype::U8,
            DType::I64 => Dtype::I64,
            other => panic!("{name}: {other:?}"),
        };
        (
            name.clone(),
            safetensors::tensor::TensorView::new(dtype, data.shape.to_vec(), data.as_bytes()).unwrap(),
        )
    });
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn load(path: &Path) -> StateTensors {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let dtype = match view.dtype() {
                Dtype::F32 => DType::F32,
                Dtype::U8 => DType::U8,
                Dtype::I64 => DType::I64,
                other => panic!("{name}: {other:?}"),
            };
            (
                name,
                TensorData::from_bytes_vec(view.data().to_vec(), view.shape().to_vec(), dtype),
            )
        })
        .collect()
}

#[test]
fn state_round_trips_through_a_checkpoint_and_resumes_bit_exactly() {
    let fx = Fixture::load();
    let device = Default::default();
    let mut params: HashMap<&str, Tensor<B, 1>> = NAMES.iter().map(|&n| (n, fx.tensor(&format!("{n}.init")))).collect();
    let step = |opt: &mut AdamW8bit<B>, params: &mut HashMap<&str, Tensor<B, 1>>, t: usize| {
        for name in NAMES {
            let p = params[name].clone();
            params.insert(
                name,
                opt.update(name, p, fx.tensor(&format!("{name}.grad.{t}")), fx.lrs[t - 1]),
            );
        }
    };
    let mut uninterrupted = AdamW8bit::<B>::new(fx.config);
    for t in 1..=3 {
        step(&mut uninterrupted, &mut params, t);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("optimizer.safetensors");
    let saved = uninterrupted.state();
    save(&saved, &path);
    let mut resumed = AdamW8bit::<B>::new(fx.config);
    resumed.load_state(load(&path), &device).unwrap();
    assert_eq!(resumed.state(), saved, "state → checkpoint → load_state → state");
    assert_eq!(resumed.state_bytes(), uninterrupted.state_bytes());

    let mut resumed_params = params.clone();
    for t in 4..=STEPS {
        step(&mut uninterrupted, &mut params, t);
        step(&mut resumed, &mut resumed_params, t);
    }
    for name in NAMES {
        assert_eq!(
            params[name].to_data(),
            resumed_params[name].to_data(),
            "`{name}` after resuming"
        );
    }
    assert_eq!(resumed.state(), uninterrupted.state());
}

#[test]
fn tensors_under_4096_elements_keep_f32_state() {
    let device = Default::default();
    let mut opt = AdamW8bit::<B>::new(AdamWConfig::default());
    for (name, n) in [("f32", MIN_8BIT_SIZE - 1), ("8bit", MIN_8BIT_SIZE), ("tail", 5000)] {
        let p = Tensor::<B, 1>::ones([n], &device);
        opt.update(name, p.clone(), p * 0.5, 1e-3);
    }
    let state = state_map(opt.state());
    assert_eq!(state["f32.state1"].dtype, DType::F32);
    assert_eq!(state["f32.state2"].dtype, DType::F32);
    assert!(!state.contains_key("f32.absmax1"));
    for (name, n) in [("8bit", MIN_8BIT_SIZE), ("tail", 5000)] {
        assert_eq!(state[&format!("{name}.state1")].dtype, DType::U8);
        assert_eq!(state[&format!("{name}.state1")].num_elements(), n);
        assert_eq!(state[&format!("{name}.absmax2")].num_elements(), n.div_ceil(256));
    }
    // f32: 8 bytes a parameter; 8-bit: 2 bytes of codes and 8 bytes of absmax per 256.
    let expected = 8 * 4095 + (2 * 4096 + 8 * 16) + (2 * 5000 + 8 * 20);
    assert_eq!(opt.state_bytes(), expected);
}

#[test]
fn load_state_rejects_bad_state_naming_the_key() {
    let fx = Fixture::load();
    let device = Default::default();
    let good = fx.state_after("big", 2);
    let with = |edit: &dyn Fn(&mut HashMap<String, TensorData>)| {
        let mut map = state_map(good.clone());
        edit(&mut map);
        AdamW8bit::<B>::new(fx.config)
            .load_state(map.into_iter().collect(), &device)
            .unwrap_err()
    };
    assert!(AdamW8bit::<B>::new(fx.config).load_state(good.clone(), &device).is_ok());
    let err = with(&|m| {
        m.remove("big.absmax2");
    });
    assert!(err.contains("`big.absmax2`"), "{err}");
    let err = with(&|m| {
        m.insert("big.absmax1".into(), TensorData::new(vec![1f32; 3], [3]));
    });
    assert!(err.contains("`big.absmax1`") && err.contains("20"), "{err}");
    let err = with(&|m| {
        m.insert("big.absmax1".into(), TensorData::new(vec![-1f32; 20], [20]));
    });
    assert!(err.contains("`big.absmax1`"), "{err}");
    let err = with(&|m| {
        m.insert("big.state2".into(), TensorData::new(vec![0f32; 5000], [5000]));
    });
    assert!(err.contains("`big.state2`"), "{err}");
    let err = with(&|m| {
        m.insert("big.step".into(), TensorData::new(vec![-1i64], [1]));
    });
    assert!(err.contains("`big.step`"), "{err}");
    let err = with(&|m| {
        m.insert("big.exp_avg".into(), TensorData::new(vec![0f32; 1], [1]));
    });
    assert!(err.contains("`big.exp_avg`"), "{err}");
    // 8-bit codes for a tensor bnb keeps in f32, and the other way round.
    let err = with(&|m| {
        m.insert("big.state1".into(), TensorData::new(vec![0u8; 100], [100]));
    });
    assert!(err.contains("`big.state1`"), "{err}");
    let err = with(&|m| {
        for k in ["state1", "state2"] {
            m.insert(format!("big.{k}"), TensorData::new(vec![0f32; 5000], [5000]));
        }
        m.remove("big.absmax1");
        m.remove("big.absmax2");
    });
    assert!(err.contains("`big.state1`"), "{err}");
}

#[test]
fn f32_adamw_is_pytorch_adamw() {
    // torch.optim.AdamW (single-tensor path) written out in f64: decay first, lerp for the first
    // moment, eps added after the bias-corrected square root. A large lr·weight_decay makes the
    // order of decay and update visible, gradients near eps make eps's placement visible.
    let config = AdamWConfig {
        weight_decay: 0.5,
        ..AdamWConfig::default()
    };
    let (lr, beta1, beta2, eps) = (0.1f64, config.beta1, config.beta2, config.eps);
    let init = [1.0f64, -0.5, 0.25, 2.0];
    let grads = [
        [0.3f64, -1e-8, 2e-9, -0.7],
        [0.1, 3e-8, -1e-9, 0.2],
        [-0.2, -2e-8, 5e-9, 0.05],
    ];
    let (mut p, mut m, mut v) = (init, [0.0f64; 4], [0.0f64; 4]);
    let device = Default::default();
    let mut opt = AdamW::<B>::new(config);
    let mut ours = Tensor::<B, 1>::from_data(init.map(|x| x as f32), &device);
    for (t, g) in grads.iter().enumerate() {
        let t = t as i32 + 1;
        for i in 0..4 {
            p[i] *= 1.0 - lr * config.weight_decay;
            m[i] += (g[i] - m[i]) * (1.0 - beta1);
            v[i] = v[i] * beta2 + (1.0 - beta2) * g[i] * g[i];
            let denom = v[i].sqrt() / (1.0 - beta2.powi(t)).sqrt() + eps;
            p[i] -= lr / (1.0 - beta1.powi(t)) * m[i] / denom;
        }
        ours = opt.update("w", ours, Tensor::from_data(g.map(|x| x as f32), &device), lr);
        let got = floats(ours.clone());
        for i in 0..4 {
            assert!(
                (got[i] as f64 - p[i]).abs() <= 1e-6 * p[i].abs(),
                "step {t}[{i}]: {} vs {}",
                got[i],
                p[i]
            );
        }
    }
}

#[test]
fn packed_updates_equal_one_tensor_at_a_time() {
    // The fixture's tensors (a partial block, a zero block, an f32-state one, NaN/inf entries)
    // plus a second 8-bit tensor, so that the packed path has several to pack.
    let fx = Fixture::load();
    let device = Default::default();
    let extra = |t: usize| {
        let values: Vec<f32> = (0..3700).map(|i| ((i * 7 + t * 13) % 97) as f32 / 97.0 - 0.5).collect();
        Tensor::<B, 1>::from_data(TensorData::new(values, [3700]), &device)
    };
    let names = ["big", "extra", "lora_a", "small"];
    let tensor = |name: &str, what: &str, t: usize| match name {
        "extra" => extra(t),
        _ => fx.tensor(&format!("{name}.{what}")),
    };
    let initial = || -> Vec<Tensor<B, 1>> { names.iter().map(|n| tensor(n, "init", 0)).collect() };
    let grads = |t: usize| -> Vec<Tensor<B, 1>> { names.iter().map(|n| tensor(n, &format!("grad.{t}"), t)).collect() };

    let mut one = AdamW8bit::<B>::new(fx.config);
    let mut one_params = initial();
    let mut packed = AdamW8bit::<B>::new(fx.config);
    let mut packed_params = initial();
    for (t, &lr) in (1..=STEPS).zip(&fx.lrs) {
        one_params = names
            .iter()
            .zip(one_params)
            .zip(grads(t))
            .map(|((name, p), g)| one.update(name, p, if t % 2 == 0 { g * 0.5 } else { g }, lr))
            .collect();
        let items = names
            .iter()
            .zip(packed_params)
            .zip(grads(t))
            .map(|((name, p), g)| (name.to_string(), p, g))
            .collect();
        // Even steps clip: the packed update scales the gradients itself.
        let grad_scale = if t % 2 == 0 { 0.5 } else { 1.0 };
        packed_params = packed.update_many(items, lr, grad_scale, None);
        for (name, (a, b)) in names.iter().zip(one_params.iter().zip(&packed_params)) {
            let (a, b) = (floats(a.clone()), floats(b.clone()));
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name} at step {t}"
            );
        }
        assert_eq!(one.state(), packed.state(), "state after step {t}");
        // Packed codes also hold each tensor's padding to a whole block: under 2 bytes × 256 each.
        let padding = packed.state_bytes() - one.state_bytes();
        assert!(padding < 2 * 256 * names.len(), "{padding}");
        if t == 2 {
            // A checkpoint round trip in the middle unpacks, and the next step packs again.
            let mut restored = AdamW8bit::<B>::new(fx.config);
            restored.load_state(packed.state(), &device).unwrap();
            packed = restored;
        }
    }
}
