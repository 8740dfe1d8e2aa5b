//! Putting adapters on a loaded model.

use burn::module::{Module, Param};
use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use ember_model::{ADAPTER_NAMES, DecoderLayer, GemmaForCausalLM, Linear, Lora, PROJECTION_NAMES, named_params};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::{Init, LoraConfig, PROJECTIONS};
use crate::error::{LoraError, Result};
use crate::targets::{Resolver, Target};

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

/// PEFT's module paths of layer `index`'s adapters, in [`ADAPTER_NAMES`]' order: a projection's
/// is its own (`model.layers.3.mlp.up_proj`). An expert weight's adapter is PEFT's
/// `ParamWrapper`, which takes the place of the `experts` module; when both weights have one,
/// the wrappers nest and the weight transformers registers first, `gate_up_proj`, is wrapped
/// first, inside the other: its adapter's path is `model.layers.3.experts.base_layer`.
pub fn adapter_paths<B: Backend>(index: usize, layer: &DecoderLayer<B>) -> [String; 9] {
    let down_proj_adapted = layer.adapters()[8].is_some();
    let experts = format!("model.layers.{index}.experts");
    let paths: [String; 7] = std::array::from_fn(|p| format!("model.layers.{index}.{}", PROJECTION_NAMES[p]));
    let [q, k, v, o, gate, up, down] = paths;
    let gate_up_proj = if down_proj_adapted {
        format!("{experts}.base_layer")
    } else {
        experts.clone()
    };
    [q, k, v, o, gate, up, down, gate_up_proj, experts]
}

/// The adapters of layer `index` with PEFT's module paths ([`adapter_paths`]), in
/// [`ADAPTER_NAMES`]' order.
pub fn adapters<B: Backend>(index: usize, layer: &DecoderLayer<B>) -> Vec<(String, &Lora<B>)> {
    adapter_paths(index, layer)
        .into_iter()
        .zip(layer.adapters())
        .filter_map(|(path, lora)| Some((path, lora?)))
        .collect()
}

/// [`adapters`], mutably.
pub fn adapters_mut<B: Backend>(index: usize, layer: &mut DecoderLayer<B>) -> Vec<(String, &mut Lora<B>)> {
    adapter_paths(index, layer)
        .into_iter()
        .zip(layer.adapters_mut())
        .filter_map(|(path, lora)| Some((path, lora?)))
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
    if !config.target_parameters.is_empty() {
        check_target_parameters(&model, config)?;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    for (i, layer) in model.model.layers.iter_mut().enumerate() {
        for (path, linear) in projections_mut(i, layer) {
            let Some(target) = resolver.target(&checkpoint(&path), i) else {
                continue;
            };
            let [out_features, in_features] = linear.shape();
            let device = linear.weight.device();
            linear.lora = Some(new_lora(
                config,
                target,
                [1, out_features, in_features],
                &device,
                &mut rng,
            ));
        }
        let Some(experts) = layer.experts.as_mut() else {
            continue;
        };
        let weights = [
            (
                "gate_up_proj",
                experts.gate_up_proj.val(),
                &mut experts.lora.gate_up_proj,
            ),
            ("down_proj", experts.down_proj.val(), &mut experts.lora.down_proj),
        ];
        for (name, weight, lora) in weights {
            let path = checkpoint(&format!("model.layers.{i}.experts.{name}"));
            if let Some(target) = resolver.parameter(&path) {
                *lora = Some(new_lora(config, target, weight.dims(), &weight.device(), &mut rng));
            }
        }
    }
    Ok(model)
}

/// A fresh adapter of `target`'s rank on a weight of `[experts, out, in]` (1 expert: a
/// projection): A `[rank·experts, in]`, B `[out, rank·experts]`, PEFT's layout for experts
/// (`ember_model`'s `expert_lora.rs`). With experts targeted, dropout is 0
/// ([`check_target_parameters`]).
fn new_lora<B: Backend>(
    config: &LoraConfig,
    target: Target,
    [experts, out_features, in_features]: [usize; 3],
    device: &B::Device,
    rng: &mut StdRng,
) -> Lora<B> {
    let rows = target.rank * experts;
    let (a, b) = initial_values(
        config.init_lora_weights,
        target.rank,
        rows,
        in_features,
        out_features,
        rng,
    );
    let param = |values: Vec<f32>, shape: [usize; 2]| {
        Param::from_tensor(Tensor::<B, 2>::from_data(
            TensorData::new(values, shape),
            (device, DType::F32),
        ))
    };
    Lora {
        a: param(a, [rows, in_features]),
        b: param(b, [out_features, rows]),
        scale: target.scale,
        dropout: config.lora_dropout,
    }
}

/// Refuses `target_parameters` Ember cannot apply as PEFT does: a name that matches no expert
/// weight, one that also selects another parameter (PEFT would adapt that one too), and the
/// settings PEFT's `ParamWrapper` refuses or ignores.
fn check_target_parameters<B: Backend>(model: &GemmaForCausalLM<B>, config: &LoraConfig) -> Result<()> {
    let error = |key: &str, message: String| LoraError::Config {
        path: "adapter_config.json".into(),
        key: key.into(),
        message,
    };
    let expert_weights: Vec<String> = (model.model.layers.iter().enumerate())
        .filter(|(_, layer)| layer.experts.is_some())
        .flat_map(|(i, _)| {
            ADAPTER_NAMES[7..]
                .iter()
                .map(move |name| format!("model.layers.{i}.{name}"))
        })
        .map(|path| model.config.checkpoint_name(&path))
        .collect();
    let others: Vec<String> = (named_params(model).into_iter())
        .filter(|p| !p.name.contains(".lora."))
        .map(|p| model.config.checkpoint_name(&p.name))
        .filter(|name| !expert_weights.contains(name))
        .collect();
    // PEFT's rule (`Resolver::parameter`): the whole path or a dotted end of it.
    let selects = |name: &str, path: &str| path == name || path.ends_with(&format!(".{name}"));
    for name in &config.target_parameters {
        if let Some(other) = others.iter().find(|path| selects(name, path)) {
            return Err(error(
                "target_parameters",
                format!(
                    "`{name}` selects `{other}`, which PEFT would adapt but Ember cannot: Ember adapts the \
                     experts' weights (`{}`, `{}`) this way; name projections in target_modules",
                    ADAPTER_NAMES[7], ADAPTER_NAMES[8]
                ),
            ));
        }
        if !expert_weights.iter().any(|path| selects(name, path)) {
            let what = if expert_weights.is_empty() {
                "this model has no experts".to_string()
            } else {
                format!(
                    "Ember adapts parameters only on Gemma 4's experts: name `{}` and/or `{}`",
                    ADAPTER_NAMES[7], ADAPTER_NAMES[8]
                )
            };
            return Err(error(
                "target_parameters",
                format!("`{name}` matches no expert weight; {what}"),
            ));
        }
    }
    if config.lora_dropout > 0.0 {
        return Err(error(
            "lora_dropout",
            format!(
                "{} with target_parameters: PEFT cannot apply dropout to an adapted parameter \
                 (its ParamWrapper refuses it); set lora_dropout = 0",
                config.lora_dropout
            ),
        ));
    }
    if let Some(layers) = &config.layers_to_transform {
        return Err(error(
            "layers_to_transform",
            format!(
                "{layers:?} with target_parameters: PEFT adapts the named parameters in every layer \
                 whatever layers_to_transform says; name each layer's weights instead \
                 (`model.layers.3.experts.down_proj`) and drop layers_to_transform"
            ),
        ));
    }
    Ok(())
}

/// The parameters of the model's adapters: with the base frozen, all that training updates
/// (PEFT's "trainable params").
pub fn adapter_parameter_count<B: Backend>(model: &GemmaForCausalLM<B>) -> usize {
    (model.model.layers.iter())
        .flat_map(|layer| layer.adapters())
        .flatten()
        .map(|lora| lora.num_params())
        .sum()
}

/// A `[rows, in]` and B `[out, rows]` as PEFT initialises an adapter of rank `rank` (`rows`
/// is the rank times the number of experts it covers).
fn initial_values(
    init: Init,
    rank: usize,
    rows: usize,
    inputs: usize,
    outputs: usize,
    rng: &mut StdRng,
) -> (Vec<f32>, Vec<f32>) {
    // kaiming_uniform_(a = √5) on a `[rows, fan_in]` weight is U(-1/√fan_in, 1/√fan_in).
    let mut uniform = |n: usize, fan_in: usize| -> Vec<f32> {
        let bound = 1.0 / (fan_in as f32).sqrt();
        (0..n).map(|_| rng.random_range(-bound..bound)).collect()
    };
    match init {
        Init::Default => (uniform(rows * inputs, inputs), vec![0.0; outputs * rows]),
        Init::Random => {
            let a = uniform(rows * inputs, inputs);
            (a, uniform(outputs * rows, rows))
        }
        Init::Gaussian => {
            let std = 1.0 / rank as f32;
            let a = (0..rows * inputs).map(|_| std * standard_normal(rng)).collect();
            (a, vec![0.0; outputs * rows])
        }
    }
}

/// Box–Muller: one draw from N(0, 1).
fn standard_normal(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}
