//! Layer-level gradient checkpointing computes the same gradients as the full graph, and
//! both match PEFT's (fixtures `fixtures/lora/plain`, and `gemma4-moe-experts` with adapters on
//! the experts' weights).

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use burn::module::AutodiffModule;
use burn::tensor::{DType, ElementConversion};
use ember_lora::{load_adapter, projections_mut};
use ember_model::{GemmaForCausalLM, IGNORE_INDEX, LoadOptions, cross_entropy_sum, shift_labels};
use ember_trainer::grads::{AdapterGrads, Checkpointing, MicroBatch, accumulate};
use ember_trainer::kernels::{BurnKernels, Favour, TrainKernels, forward_layers};
use safetensors::SafeTensors;

type AD = Autodiff<NdArray<f32>>;
type B = NdArray<f32>;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model_with_adapter() -> GemmaForCausalLM<AD> {
    model_with("gemma3", "plain")
}

/// The fixture model `base` with the PEFT adapter `fixtures/lora/<case>`.
fn model_with(base: &str, case: &str) -> GemmaForCausalLM<AD> {
    let base = GemmaForCausalLM::load(
        &repo().join("fixtures/models").join(base),
        &LoadOptions::new(DType::F32),
        &Default::default(),
    )
    .unwrap();
    load_adapter(base, &repo().join("fixtures/lora").join(case)).unwrap().0
}

fn reference_batch() -> MicroBatch {
    reference_batch_of("gemma3")
}

/// The reference batch of the fixture model `base`, labels its input ids, padding ignored.
fn reference_batch_of(base: &str) -> MicroBatch {
    let bytes = std::fs::read(repo().join("fixtures/models").join(base).join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ints = |name: &str| -> Vec<i64> {
        st.tensor(name)
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (ids, mask) = (ints("input_ids"), ints("attention_mask"));
    let (batch, seq) = (2, ids.len() / 2);
    let labels: Vec<i64> = ids
        .iter()
        .zip(&mask)
        .map(|(&id, &m)| if m == 0 { IGNORE_INDEX } else { id })
        .collect();
    let targets = shift_labels(&labels, seq);
    let num_trained_tokens = targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
    MicroBatch {
        batch,
        seq,
        input_ids: ids,
        segments: mask,
        positions: (0..batch).flat_map(|_| 0..seq as i64).collect(),
        targets,
        num_trained_tokens,
        seed: 7,
    }
}

const FULL: Checkpointing = Checkpointing::Off;
const LAYERS: Checkpointing = Checkpointing::Layers { offload: false };

fn grads(checkpointing: Checkpointing) -> (f64, AdapterGrads<B>) {
    grads_with_dropout(checkpointing, 0.0)
}

fn grads_with_dropout(checkpointing: Checkpointing, dropout: f64) -> (f64, AdapterGrads<B>) {
    let _alone = (dropout > 0.0).then(crate::common::dropout_alone);
    let mut model = model_with_adapter();
    for (i, layer) in model.model.layers.iter_mut().enumerate() {
        for (_, linear) in projections_mut(i, layer) {
            if let Some(lora) = linear.lora.as_mut() {
                lora.dropout = dropout;
            }
        }
    }
    grads_of(&model, &reference_batch(), checkpointing)
}

/// The mean loss of `batch` and the adapters' gradients, by PEFT key.
fn grads_of(model: &GemmaForCausalLM<AD>, batch: &MicroBatch, checkpointing: Checkpointing) -> (f64, AdapterGrads<B>) {
    let mut grads = AdapterGrads::new();
    let loss_sum = accumulate(
        model,
        batch,
        batch.num_trained_tokens as f64,
        checkpointing,
        &BurnKernels,
        &mut grads,
        None,
        None,
    )
    .unwrap();
    (loss_sum / batch.num_trained_tokens as f64, grads)
}

fn values(t: &burn::tensor::Tensor<B, 2>) -> Vec<f32> {
    t.to_data().into_vec::<f32>().unwrap()
}

fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
    diff / norm.max(1e-30)
}

#[test]
fn checkpointed_gradients_equal_full_graph_gradients_and_peft() {
    let (loss_full, full) = grads(FULL);
    let (loss_ckpt, ckpt) = grads(LAYERS);
    assert_eq!(full.len(), 7 * 7 * 2);
    assert_both_equal_peft("plain", (loss_full, full), (loss_ckpt, ckpt));
}

#[test]
fn expert_adapter_gradients_of_both_paths_equal_peft() {
    // q, k, v, o and the experts' two weights (PEFT's ParamWrapper keys), A and B, on 5 layers,
    // less v_proj on the 2 global layers (their keys are their values).
    let model = model_with("gemma4-moe", "gemma4-moe-experts");
    let batch = reference_batch_of("gemma4-moe");
    let (full, ckpt) = (grads_of(&model, &batch, FULL), grads_of(&model, &batch, LAYERS));
    assert_eq!(full.1.len(), (5 * 6 - 2) * 2);
    assert!(
        full.1
            .contains_key("base_model.model.model.layers.4.experts.base_layer.lora_A.weight")
    );
    assert_both_equal_peft("gemma4-moe-experts", full, ckpt);
}

/// The full graph's and the checkpointed step's losses and gradients agree, and equal PEFT's
/// in `fixtures/lora/<case>`.
fn assert_both_equal_peft(
    case: &str,
    (loss_full, full): (f64, AdapterGrads<B>),
    (loss_ckpt, ckpt): (f64, AdapterGrads<B>),
) {
    assert_eq!(full.keys().collect::<Vec<_>>(), ckpt.keys().collect::<Vec<_>>());
    assert!((loss_full - loss_ckpt).abs() < 1e-5, "{loss_full} vs {loss_ckpt}");

    let bytes = std::fs::read(repo().join("fixtures/lora").join(case).join("reference.safetensors")).unwrap();
    let reference = SafeTensors::deserialize(&bytes).unwrap();
    let peft_loss = f32::from_le_bytes(reference.tensor("loss").unwrap().data().try_into().unwrap());
    assert!(
        (loss_full - peft_loss as f64).abs() < 1e-5,
        "{loss_full} vs PEFT {peft_loss}"
    );
    for (key, g) in &full {
        let ours = values(g);
        let err = relative_error(&values(&ckpt[key]), &ours);
        assert!(err < 1e-5, "{key}: checkpointed differs by {err:e}");
        let peft: Vec<f32> = reference
            .tensor(&format!("{key}.grad"))
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let err = relative_error(&ours, &peft);
        assert!(err < 1e-4, "{key}: differs from PEFT by {err:e}");
    }
}

#[test]
fn checkpointing_replays_the_dropout_masks() {
    let (loss_full, full) = grads_with_dropout(FULL, 0.3);
    let (loss_ckpt, ckpt) = grads_with_dropout(LAYERS, 0.3);
    let (loss_plain, plain) = grads(FULL);
    assert!((loss_full - loss_ckpt).abs() < 1e-5, "{loss_full} vs {loss_ckpt}");
    assert!(
        (loss_full - loss_plain).abs() > 1e-4,
        "dropout changed nothing: {loss_full}"
    );
    for (key, g) in &full {
        let err = relative_error(&values(&ckpt[key]), &values(g));
        assert!(err < 1e-5, "{key}: checkpointed differs by {err:e}");
    }
    let moved = full.keys().filter(|k| {
        let err = relative_error(&values(&full[*k]), &values(&plain[*k]));
        assert!(err.is_finite(), "{k}: {err}");
        err > 1e-3
    });
    assert!(moved.count() > 0, "dropout changed no gradient");
}

#[test]
fn offloaded_layer_inputs_change_no_bit() {
    let (loss, kept) = grads_with_dropout(LAYERS, 0.3);
    let (loss_offloaded, offloaded) = grads_with_dropout(Checkpointing::Layers { offload: true }, 0.3);
    assert_eq!(loss.to_bits(), loss_offloaded.to_bits());
    assert_eq!(kept.keys().collect::<Vec<_>>(), offloaded.keys().collect::<Vec<_>>());
    for (key, g) in &kept {
        assert_eq!(values(g), values(&offloaded[key]), "{key}");
    }
}

#[test]
fn padding_to_a_multiple_changes_no_loss_or_gradient() {
    let reference = reference_batch();
    let labels: Vec<i64> = reference
        .input_ids
        .iter()
        .zip(&reference.segments)
        .map(|(&id, &s)| if s == 0 { IGNORE_INDEX } else { id })
        .collect();
    let batch = ember_data::Batch {
        batch_size: reference.batch,
        seq_len: reference.seq,
        input_ids: reference.input_ids.iter().map(|&v| v as u32).collect(),
        labels,
        segment_ids: reference.segments.iter().map(|&v| v as u32).collect(),
        position_ids: reference.positions.iter().map(|&v| v as u32).collect(),
        num_trained_tokens: reference.num_trained_tokens,
    };
    let run = |multiple: usize| {
        let micro = MicroBatch::from_batch(&batch, multiple);
        let mut grads = AdapterGrads::new();
        let loss = accumulate(
            &model_with_adapter(),
            &micro,
            micro.num_trained_tokens as f64,
            LAYERS,
            &BurnKernels,
            &mut grads,
            None,
            None,
        )
        .unwrap();
        (micro.seq, loss, grads)
    };
    let (seq, loss, grads) = run(1);
    let (padded_seq, padded_loss, padded_grads) = run(64);
    assert_eq!((seq, padded_seq), (20, 64));
    assert!(
        (loss - padded_loss).abs() < 1e-4 * loss.abs(),
        "{loss} vs {padded_loss}"
    );
    for (key, g) in &grads {
        let err = relative_error(&values(&padded_grads[key]), &values(g));
        assert!(err < 1e-5, "{key}: padding changed the gradient by {err:e}");
    }
}

/// Evaluation through the kernels (each layer, then the loss without a gradient) gives the
/// model's own forward: the same summed loss and the same logits.
#[test]
fn kernel_loss_and_logits_equal_the_models_forward() {
    let model = model_with_adapter().valid();
    let batch = reference_batch();
    let device = Default::default();
    let mut step = BurnKernels.prepare(&model, &batch, Favour::Speed).unwrap();
    let x = forward_layers(&model, step.as_mut(), &batch).unwrap();
    let loss = step.loss(x.clone()).unwrap().into_scalar().elem::<f64>();
    let logits = step.logits(x).unwrap();

    let want_logits = model.forward(batch.input::<B>(&device), None);
    let [rows, seq, vocab] = want_logits.dims();
    let want_loss = cross_entropy_sum(want_logits.clone().reshape([rows * seq, vocab]), batch.targets(&device))
        .into_scalar()
        .elem::<f64>();
    assert!(
        (loss - want_loss).abs() <= 1e-5 * want_loss.abs(),
        "{loss} vs {want_loss}"
    );
    let diff = (logits - want_logits).abs().max().into_scalar().elem::<f64>();
    assert!(diff <= 1e-5, "logits differ by {diff}");
}
