//! Putting adapters on a loaded model.

use burn::module::{Module, Param};
use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use ember_model::{DecoderLayer, GemmaForCausalLM, Linear, Lora, PROJECTION_NAMES};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::{Init, LoraConfig, PROJECTIONS};
use crate::error::{LoraError, Result};
use crate::targets::Resolver;

/// The projections of layer `index` with their module paths (`model.layers.3.mlp.up_proj`):
/// the seven, less those a layer that shares another's keys and values lacks.
pub fn projections<B: Backend>(index: usize, layer: &DecoderLayer<B>) -> Vec<(String, &Linear<B>)> {
    PROJECTION_NAMES
        .iter()
        .zip(layer.projections())
        .filter_map(|(name, linear)| Some((format!("model.layers.{index}.{name}"), linear?)))
        .collect()
}

/// [`projections`], mutably.
pub fn projections_mut<B: Backend>(index: usize, layer: &mut DecoderLayer<B>) -> Vec<(String, &mut Linear<B>)> {
    PROJECTION_NAMES
        .iter()
        .zip(layer.projections_mut())
        .filter_map(|(name, linear)| Some((format!("model.layers.{index}.{name}"), linear?)))
        .collect()
}

/// The layer index in a module path (`model.layers.3.…` → 3).
fn layer_index(path: &str) -> Option<usize> {
    let rest = path.split_once("layers.")?.1;
    rest.split('.').next()?.parse().ok()
}

/// Adds a freshly initialised adapter to every targeted projection. Initialisation draws
/// from `seed` on the host, so it is the same on every backend.
///
/// The adapters' parameters are f32 and require gradients; the base stays frozen.
pub fn add_lora<B: Backend>(
    mut model: GemmaForCausalLM<B>,
    config: &LoraConfig,
    seed: u64,
) -> Result<GemmaForCausalLM<B>> {
    let resolver = Resolver::new(config)?;
    // PEFT matches module paths as the checkpoint has them (`model.language_model.layers.…`
    // in a multimodal one).
    let checkpoint = |path: &str| model.config.checkpoint_name(path);
    let paths: Vec<String> = (model.model.layers.iter().enumerate())
        .flat_map(|(i, layer)| projections(i, layer).into_iter().map(|(p, _)| checkpoint(&p)))
        .collect();
    for path in model.other_linear_paths() {
        let layer = layer_index(&path).unwrap_or(usize::MAX);
        if resolver.target(&checkpoint(&path), layer).is_some() {
            return Err(LoraError::Config {
                path: "adapter_config.json".into(),
                key: "target_modules".into(),
                message: format!(
                    "it also selects `{}`, which PEFT would adapt but Ember cannot; on this model \
                     name the attention and MLP projections ({})",
                    checkpoint(&path),
                    PROJECTIONS.join(", ")
                ),
            });
        }
    }
    resolver.check_names_match(&paths)?;
    let mut rng = StdRng::seed_from_u64(seed);
    for (i, layer) in model.model.layers.iter_mut().enumerate() {
        for (path, linear) in projections_mut(i, layer) {
            let Some(target) = resolver.target(&checkpoint(&path), i) else {
                continue;
            };
            let [out_features, in_features] = linear.shape();
            let device = linear.weight.device();
            let (a, b) = initial_values(
                config.init_lora_weights,
                target.rank,
                in_features,
                out_features,
                &mut rng,
            );
            let param = |values: Vec<f32>, shape: [usize; 2]| {
                Param::from_tensor(Tensor::<B, 2>::from_data(
                    TensorData::new(values, shape),
                    (&device, DType::F32),
                ))
            };
            linear.lora = Some(Lora {
                a: param(a, [target.rank, in_features]),
                b: param(b, [out_features, target.rank]),
                scale: target.scale,
                dropout: config.lora_dropout,
            });
        }
    }
    Ok(model)
}

/// The parameters of the model's adapters: with the base frozen, all that training updates
/// (PEFT's "trainable params").
pub fn adapter_parameter_count<B: Backend>(model: &GemmaForCausalLM<B>) -> usize {
    model
        .model
        .layers
        .iter()
        .enumerate()
        .flat_map(|(i, layer)| projections(i, layer))
        .filter_map(|(_, linear)| linear.lora.as_ref())
        .map(|lora| lora.num_params())
        .sum()
}

/// A `[rank, in]` and B `[out, rank]` as PEFT initialises them.
fn initial_values(init: Init, rank: usize, inputs: usize, outputs: usize, rng: &mut StdRng) -> (Vec<f32>, Vec<f32>) {
    // kaiming_uniform_(a = √5) on a `[rows, fan_in]` weight is U(-1/√fan_in, 1/√fan_in).
    let mut uniform = |n: usize, fan_in: usize| -> Vec<f32> {
        let bound = 1.0 / (fan_in as f32).sqrt();
        (0..n).map(|_| rng.random_range(-bound..bound)).collect()
    };
    match init {
        Init::Default => (uniform(rank * inputs, inputs), vec![0.0; outputs * rank]),
        Init::Random => {
            let a = uniform(rank * inputs, inputs);
            (a, uniform(outputs * rank, rank))
        }
        Init::Gaussian => {
            let std = 1.0 / rank as f32;
            let a = (0..rank * inputs).map(|_| std * standard_normal(rng)).collect();
            (a, vec![0.0; outputs * rank])
        }
    }
}

/// Box–Muller: one draw from N(0, 1).
fn standard_normal(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}
