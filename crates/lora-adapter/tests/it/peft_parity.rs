//! Ember against PEFT: adapters PEFT saved load in Ember and give PEFT's logits, loss and
//! gradients (f32, CPU). Fixtures: `fixtures/make_lora_fixtures.py`.

use crate::common::{AD, Batch, load, model_dir, relative_error, repo, to_vec};
use burn::module::Module;
use burn::optim::GradientsParams;
use ember_lora::{adapters, load_adapter, peft_key};
use ember_model::causal_lm_loss_sum;
use ember_testkit::max_abs_diff;
use ember_testkit::read_f32;

const CASES: &[&str] = &[
    "plain",
    "rslora",
    "patterns",
    "gemma3n",
    "gemma4",
    "gemma4-moe",
    "gemma4-moe-experts",
];

fn base_of(case: &str) -> String {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("fixtures/lora").join(case).join("reference.json")).unwrap(),
    )
    .unwrap();
    json["base"].as_str().unwrap().to_string()
}

#[test]
fn peft_adapters_give_peft_logits_loss_and_gradients() {
    for case in CASES {
        let dir = repo().join("fixtures/lora").join(case);
        let base = base_of(case);
        let (model, _) = load_adapter(load::<AD>(&model_dir(&base)), &dir).unwrap();
        let reference = read_f32(&dir.join("reference.safetensors"));
        let get = |name: &str| {
            reference
                .iter()
                .find(|(n, _, _)| n == name)
                .unwrap_or_else(|| panic!("{name}"))
        };

        let batch = Batch::of(&base);
        let logits = model.forward(batch.input(), None);
        let vocab = logits.dims()[2];
        let ours = batch.real_logits(&to_vec(logits.clone()), vocab);
        let theirs = batch.real_logits(&get("logits").2, vocab);
        let worst_logit = max_abs_diff(&ours, &theirs);
        assert!(worst_logit < 1e-4, "{case}: logits differ by {worst_logit:e}");

        let (sum, count) = causal_lm_loss_sum(logits, batch.labels());
        let loss = sum / count as f32;
        let loss_value = to_vec(loss.clone())[0];
        assert!(
            (loss_value - get("loss").2[0]).abs() < 1e-5,
            "{case}: loss {loss_value} vs {}",
            get("loss").2[0]
        );

        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let mut checked = 0;
        // The worst relative error of all gradients, and of the experts' (PEFT's target_parameters).
        let (mut worst, mut worst_experts) = ((0.0, String::new()), 0.0f64);
        for (i, layer) in model.model.layers.iter().enumerate() {
            for (path, lora) in adapters(i, layer) {
                for (matrix, param) in [('A', &lora.a), ('B', &lora.b)] {
                    // PEFT names the checkpoint's module paths (`model.language_model.…`, multimodal).
                    let key = peft_key(&model.config.checkpoint_name(&path), matrix) + ".grad";
                    let grad = grads
                        .get::<burn::backend::NdArray<f32>, 2>(param.id)
                        .unwrap_or_else(|| panic!("{case}: no gradient for {key}"));
                    let err = relative_error(&to_vec(grad), &get(&key).2);
                    assert!(err < 1e-4, "{case}: {key} relative error {err:e}");
                    if key.contains(".experts.") {
                        worst_experts = worst_experts.max(err);
                    }
                    if err > worst.0 {
                        worst = (err, key);
                    }
                    checked += 1;
                }
            }
        }
        let experts = if worst_experts > 0.0 {
            format!(" (experts' {worst_experts:e})")
        } else {
            String::new()
        };
        eprintln!(
            "{case}: logits within {worst_logit:e}, worst gradient relative error {:e} at {}{experts}",
            worst.0, worst.1
        );
        let expected = reference.iter().filter(|(n, _, _)| n.ends_with(".grad")).count();
        assert_eq!(checked, expected, "{case}: every PEFT gradient has an Ember twin");
        assert!(model.num_params() > 0);
    }
}
