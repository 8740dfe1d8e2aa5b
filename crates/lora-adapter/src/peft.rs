//! Adapters on disk in PEFT's format: `adapter_config.json` + `adapter_model.safetensors`
//! with keys `base_model.model.<module path>.lora_A.weight` (`[r, in]`) and `lora_B.weight`
//! (`[out, r]`), f32, metadata `format: pt`. An adapter on an expert weight
//! (`target_parameters`) is stored under its `ParamWrapper`'s path, `…experts` or, nested,
//! `…experts.base_layer` ([`crate::adapter_paths`]), as `[r·experts, in]` and
//! `[out, r·experts]` (layout: `ember_model`'s `expert_lora.rs`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::Param;
use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use ember_model::GemmaForCausalLM;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::apply::{adapters, adapters_mut, add_lora};
use crate::atomic::write_dir_atomically;
use crate::config::LoraConfig;
use crate::error::{LoraError, Result};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// PEFT's key for the adapter tensor `A` or `B` of the projection at `path`.
pub fn peft_key(path: &str, matrix: char) -> String {
    format!("base_model.model.{path}.lora_{matrix}.weight")
}

/// Adapter tensors by PEFT key: shape and f32 values.
pub type AdapterTensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// The adapter tensors of `model` under PEFT's keys, as f32 values with their shapes. Keys
/// follow the checkpoint's module paths (`model.language_model.layers.…` for a multimodal
/// base), so PEFT applies the adapter to the model the checkpoint loads as.
pub fn adapter_tensors<B: Backend>(model: &GemmaForCausalLM<B>) -> Result<AdapterTensors> {
    let mut tensors = BTreeMap::new();
    for (i, layer) in model.model.layers.iter().enumerate() {
        for (path, lora) in adapters(i, layer) {
            for (matrix, param) in [('A', &lora.a), ('B', &lora.b)] {
                let tensor = param.val();
                let shape = tensor.dims().to_vec();
                let values = (tensor.cast(DType::F32).into_data().into_vec::<f32>())
                    .map_err(|e| LoraError::io(&path, std::io::Error::other(format!("{e:?}"))))?;
                tensors.insert(peft_key(&model.config.checkpoint_name(&path), matrix), (shape, values));
            }
        }
    }
    Ok(tensors)
}

/// Writes the model's adapters to `dir` as PEFT does, atomically.
pub fn save_adapter<B: Backend>(model: &GemmaForCausalLM<B>, config: &LoraConfig, dir: &Path) -> Result<()> {
    write_dir_atomically(dir, |tmp| write_adapter_files(model, config, tmp))
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` into the existing `dir`.
pub fn write_adapter_files<B: Backend>(model: &GemmaForCausalLM<B>, config: &LoraConfig, dir: &Path) -> Result<()> {
    let tensors = adapter_tensors(model)?;
    if tensors.is_empty() {
        return Err(LoraError::NoAdapter("save"));
    }
    let config_path = dir.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(&config.to_json()).expect("a JSON value serialises");
    std::fs::write(&config_path, text + "\n").map_err(|e| LoraError::io(&config_path, e))?;
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(key, (shape, values))| (key, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let path = dir.join(WEIGHTS_FILE);
    let views = bytes
        .iter()
        .map(|(key, shape, data)| TensorView::new(Dtype::F32, shape.clone(), data).map(|view| (key.clone(), view)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| safetensors_error(&path, e))?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), &path).map_err(|e| safetensors_error(&path, e))
}

/// Loads a PEFT adapter directory onto `model`. Refuses adapters Ember cannot apply
/// exactly: see [`LoraConfig::from_file`] for the settings, and the tensors must be exactly
/// the ones the config implies for this model.
pub fn load_adapter<B: Backend>(model: GemmaForCausalLM<B>, dir: &Path) -> Result<(GemmaForCausalLM<B>, LoraConfig)> {
    let config = LoraConfig::from_file(&dir.join(CONFIG_FILE))?;
    Ok((load_adapter_as(model, dir, &config)?, config))
}

/// [`load_adapter`] with `config` in place of the directory's own: the same adapters (their
/// tensors must fit it exactly), other settings such as dropout for continued training.
pub fn load_adapter_as<B: Backend>(
    model: GemmaForCausalLM<B>,
    dir: &Path,
    config: &LoraConfig,
) -> Result<GemmaForCausalLM<B>> {
    let mut model = add_lora(model, config, 0)?;
    let path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).map_err(|e| LoraError::io(&path, e))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| safetensors_error(&path, e))?;
    let mut unused: Vec<String> = file.names().into_iter().map(String::from).collect();
    let config = model.config.clone();
    let checkpoint_name = |path: &str| config.checkpoint_name(path);
    for (i, layer) in model.model.layers.iter_mut().enumerate() {
        for (module, lora) in adapters_mut(i, layer) {
            for (matrix, param) in [('A', &mut lora.a), ('B', &mut lora.b)] {
                let key = peft_key(&checkpoint_name(&module), matrix);
                *param = read_param(&file, &path, &key, param.val().dims(), &param.val().device())?;
                unused.retain(|k| k != &key);
            }
        }
    }
    if let Some(first) = unused.first() {
        return Err(LoraError::UnexpectedTensors {
            path,
            count: unused.len(),
            first: first.clone(),
        });
    }
    Ok(model)
}

fn read_param<B: Backend>(
    file: &SafeTensors,
    path: &Path,
    key: &str,
    shape: [usize; 2],
    device: &B::Device,
) -> Result<Param<Tensor<B, 2>>> {
    let view = file.tensor(key).map_err(|_| LoraError::MissingTensor {
        path: path.to_path_buf(),
        key: key.to_string(),
    })?;
    if view.shape() != shape {
        return Err(LoraError::ShapeMismatch {
            path: path.to_path_buf(),
            key: key.to_string(),
            found: view.shape().to_vec(),
            expected: shape.to_vec(),
        });
    }
    let dtype = match view.dtype() {
        Dtype::F32 => DType::F32,
        Dtype::BF16 => DType::BF16,
        Dtype::F16 => DType::F16,
        other => {
            return Err(LoraError::Safetensors {
                path: path.to_path_buf(),
                message: format!("tensor `{key}` has dtype {other:?}; expected F32, BF16 or F16"),
            });
        }
    };
    let data = TensorData::from_bytes_vec(view.data().to_vec(), shape.to_vec(), dtype).convert_dtype(DType::F32);
    Ok(Param::from_tensor(Tensor::from_data(data, (device, DType::F32))))
}

fn safetensors_error(path: &Path, e: safetensors::SafeTensorError) -> LoraError {
    LoraError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}
