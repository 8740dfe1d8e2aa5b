//! The explicit backward of the decoder layers and of the LM head + loss (what a training step
//! runs) equals burn autodiff's gradients of the model's own forward, for every fixture family
//! (Gemma with MQA and with MHA + an untied head, Gemma 2 with soft-capping and sliding
//! windows, Gemma 3 with q/k norms, Gemma 3n with AltUp, Laurel, per-layer inputs, sparse
//! activations and shared keys and values, Gemma 4 with those it has, keys as values and
//! experts, adapters on the experts' weights included), on padded and packed batches, with and without dropout. The layers run as a
//! stack, forward then backward in reverse, as a training step runs them: layers that share
//! keys and values pass gradients between them.

use std::sync::{Mutex, MutexGuard};

use crate::common::{B, MODELS, fixture, load_on};
use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor};
use ember_model::{
    ADAPTER_NAMES, AttentionMask, ForwardInput, GemmaForCausalLM, IGNORE_INDEX, Lora, cross_entropy_sum,
};

type AD = Autodiff<B>;

/// burn's backend generator is one per process: a test that seeds it and expects the next
/// draws (the dropout masks) must not interleave with another test's draws. Each test holds
/// this for its whole run.
static GENERATOR: Mutex<()> = Mutex::new(());

fn generator() -> MutexGuard<'static, ()> {
    GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

const BATCH: usize = 2;
/// Not a multiple of any tile size, longer than Gemma 2's fixture window (6).
const SEQ: usize = 11;

/// Row 0 packs two samples (positions restart at 0), row 1 ends in padding.
fn layout() -> (Vec<i64>, Vec<i64>) {
    let segments: Vec<i64> = [[1; 5].as_slice(), &[2; 6], &[1; 8], &[0; 3]].concat();
    let positions: Vec<i64> = [
        (0..5).collect::<Vec<i64>>(),
        (0..6).collect(),
        (0..8).collect(),
        vec![0; 3],
    ]
    .concat();
    (segments, positions)
}

fn input<Bk: Backend>(device: &Bk::Device) -> ForwardInput<Bk> {
    let (segments, positions) = layout();
    let ints = |v: &[i64]| Tensor::<Bk, 1, Int>::from_data(v, device).reshape([BATCH, SEQ]);
    ForwardInput {
        input_ids: Tensor::zeros([BATCH, SEQ], device),
        positions: ints(&positions),
        mask: AttentionMask::with_segments(ints(&segments)),
    }
}

/// The fixture with a random adapter on every projection and expert weight (B non-zero, so
/// every gradient path carries signal).
fn model_with_adapters(name: &str, dropout: f64) -> GemmaForCausalLM<AD> {
    let device = Default::default();
    let mut model: GemmaForCausalLM<AD> = load_on(&fixture(name), &device);
    let rank = 3;
    let random = |shape: [usize; 2]| {
        Param::from_tensor(Tensor::<AD, 2>::random(shape, Distribution::Normal(0.0, 0.3), &device).require_grad())
    };
    for layer in &mut model.model.layers {
        for linear in layer.projections_mut().into_iter().flatten() {
            let [out, inp] = linear.shape();
            linear.lora = Some(Lora {
                a: random([rank, inp]),
                b: random([out, rank]),
                scale: 1.5,
                dropout,
            });
        }
        if let Some(experts) = &mut layer.experts {
            let n = experts.num_experts();
            let weights = [
                (experts.gate_up_proj.val().dims(), &mut experts.lora.gate_up_proj),
                (experts.down_proj.val().dims(), &mut experts.lora.down_proj),
            ];
            // PEFT's layout (`expert_lora.rs`); PEFT gives expert weights no dropout.
            for ([_, out, inp], lora) in weights {
                *lora = Some(Lora {
                    a: random([rank * n, inp]),
                    b: random([out, rank * n]),
                    scale: 0.7,
                    dropout: 0.0,
                });
            }
        }
    }
    model
}

fn values<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

/// ‖a − b‖ / ‖b‖; NaN anywhere fails.
fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    assert!(a.iter().chain(b).all(|v| v.is_finite()), "non-finite values");
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
    diff / norm.max(1e-30)
}

fn assert_close(what: &str, explicit: Vec<f32>, autodiff: Vec<f32>) {
    let err = relative_error(&explicit, &autodiff);
    assert!(err < 1e-5, "{what}: explicit backward differs from autodiff by {err:e}");
}

fn check_layers(name: &str, dropout: f64) {
    let device = Default::default();
    let model = model_with_adapters(name, dropout);
    let frozen = model.valid();
    let width = model.config.residual_width();
    let layers = model.model.layers.len();
    let x = Tensor::<B, 3>::random([BATCH, SEQ, width], Distribution::Normal(0.0, 1.0), &device);
    let dy = Tensor::<B, 3>::random([BATCH, SEQ, width], Distribution::Normal(0.0, 1.0), &device);

    // Autodiff of the model's own forward (which draws dropout masks under autodiff).
    let mut context = model.layer_context(&input::<AD>(&device));
    let leaf = Tensor::<AD, 3>::from_inner(x.clone()).require_grad();
    let mut y = leaf.clone();
    let mut outputs = Vec::new();
    for index in 0..layers {
        AD::seed(&device, 40 + index as u64);
        y = model.layer(index, y, &mut context, None);
        outputs.push(y.clone().inner());
    }
    let gradients = (y * Tensor::from_inner(dy.clone())).sum().backward();

    // The explicit forward and backward, with masks drawn from the same seeds.
    let mut context = frozen.layer_context(&input::<B>(&device));
    let mut saved = Vec::new();
    let mut y = x;
    for (index, autodiff_output) in outputs.into_iter().enumerate() {
        B::seed(&device, 40 + index as u64);
        let keep = frozen.model.layers[index].draw_keep(BATCH, SEQ, &device);
        let (output, layer_saved) = frozen.layer_saving(index, y, &mut context, keep);
        assert_close(
            &format!("{name} layer {index} output"),
            values(output.clone()),
            values(autodiff_output),
        );
        saved.push(layer_saved);
        y = output;
    }
    let mut grad = dy;
    for index in (0..layers).rev() {
        let layer_saved = saved.pop().expect("one per layer");
        let (dx, grads) = frozen.layer_backward(index, layer_saved, &mut context, grad);
        let autodiff_layer = &model.model.layers[index];
        for (p, (lora, grad)) in autodiff_layer.adapters().into_iter().zip(grads).enumerate() {
            let p = ADAPTER_NAMES[p];
            let Some(lora) = lora else {
                assert!(
                    grad.is_none(),
                    "{name} layer {index}: {p} has no adapter but a gradient"
                );
                continue;
            };
            let grad = grad.unwrap_or_else(|| panic!("{name} layer {index}: {p} has no gradient"));
            let what = |m: &str| format!("{name} layer {index} {p} lora_{m}");
            assert_close(
                &what("A"),
                values(grad.a),
                values(lora.a.val().grad(&gradients).unwrap()),
            );
            assert_close(
                &what("B"),
                values(grad.b),
                values(lora.b.val().grad(&gradients).unwrap()),
            );
        }
        grad = dx;
    }
    assert_close(
        &format!("{name} input gradient"),
        values(grad),
        values(leaf.grad(&gradients).unwrap()),
    );
}

#[test]
fn layer_backward_equals_autodiff_for_every_family() {
    let _generator = generator();
    for name in MODELS {
        check_layers(name, 0.0);
    }
}

#[test]
fn layer_backward_replays_dropout_masks_as_autodiff_draws_them() {
    let _generator = generator();
    check_layers("gemma2", 0.25);
    check_layers("gemma3", 0.25);
    check_layers("gemma3n", 0.25);
    check_layers("gemma4", 0.25);
}

#[test]
fn head_loss_backward_equals_autodiff_for_every_family() {
    let _generator = generator();
    let device = Default::default();
    for name in MODELS {
        let model = model_with_adapters(name, 0.0);
        let rows = BATCH * SEQ;
        let hidden = model.config.residual_width();
        let x = Tensor::<B, 2>::random([rows, hidden], Distribution::Normal(0.0, 1.0), &device);
        let vocab = model.config.vocab_size as i64;
        let targets: Vec<i64> = (0..rows as i64)
            .map(|i| if i % 4 == 3 { IGNORE_INDEX } else { (i * 37) % vocab })
            .collect();
        let targets = Tensor::<B, 1, Int>::from_data(targets.as_slice(), &device);
        let normaliser = 7.0;

        let leaf = Tensor::<AD, 2>::from_inner(x.clone()).require_grad();
        let logits = model.logits(model.final_norm(leaf.clone().reshape([1, rows, hidden])));
        let loss = cross_entropy_sum(
            logits.reshape([rows, model.config.vocab_size]),
            Tensor::from_inner(targets.clone()),
        );
        let gradients = (loss.clone() / normaliser).backward();

        let (explicit_loss, dx) = model.valid().head_loss(x, targets, normaliser);
        assert_close(&format!("{name} loss"), values(explicit_loss), values(loss.inner()));
        assert_close(
            &format!("{name} head input gradient"),
            values(dx),
            values(leaf.grad(&gradients).unwrap()),
        );
    }
}
