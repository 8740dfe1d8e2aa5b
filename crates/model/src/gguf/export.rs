//! A model as a GGUF file llama.cpp runs: the tensors under llama.cpp's names (norms stored as
//! `1 + w`, GGUF's reversed dimensions), quantized as ggml does, with the architecture and the
//! tokenizer as metadata, as `convert_hf_to_gguf.py --outtype` writes them.

use std::path::Path;

use burn::tensor::{DType, backend::Backend};

use super::arch::Architecture;
use super::export_config::hyperparameters;
use super::export_vocab::{copied_vocab, vocab_of_dir};
use super::names::{gguf_name, is_shifted_norm};
use super::quant_mix::q4_k_m_type;
use super::quantize::quantize;
use super::reader::Value;
use super::types::GgmlType;
use super::writer::{TensorPlan, write_gguf};
use crate::error::{ModelError, Result};
use crate::model::GemmaForCausalLM;
use crate::named::named_params;
use crate::source::ModelSource;

/// The type of a GGUF export's matrices (llama.cpp's `--outtype`); vectors (the norms) are
/// always F32, as llama.cpp's converter keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)] // llama.cpp's names
pub enum GgufFileType {
    F32,
    F16,
    BF16,
    Q8_0,
    /// llama.cpp's Q4_K_M mix, as `llama-quantize` makes it from the f32 file.
    Q4_K_M,
}

impl GgufFileType {
    /// `general.file_type` (llama.cpp's `llama_ftype`).
    fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 7,
            Self::Q4_K_M => 15,
            Self::BF16 => 32,
        }
    }

    /// The type of the matrix `name` whose rows hold `row` values, in a model of `layers`
    /// blocks: block types need whole blocks, and llama.cpp's converter falls back to F16
    /// otherwise; Q4_K_M is llama.cpp's mix ([`q4_k_m_type`]).
    fn matrix_type(self, name: &str, row: usize, layers: usize) -> GgmlType {
        let ty = match self {
            Self::F32 => GgmlType::F32,
            Self::F16 => GgmlType::F16,
            Self::BF16 => GgmlType::BF16,
            Self::Q8_0 => GgmlType::Q8_0,
            Self::Q4_K_M => return q4_k_m_type(name, row, layers),
        };
        match row.is_multiple_of(ty.block().0) {
            true => ty,
            false => GgmlType::F16,
        }
    }
}

/// Writes `model` (adapters merged or none), whose architecture and tokenizer are those of
/// `base`, as the GGUF file `path`.
pub fn export_gguf<B: Backend>(
    model: &GemmaForCausalLM<B>,
    base: &ModelSource,
    path: &Path,
    file_type: GgufFileType,
) -> Result<()> {
    let config = &model.config;
    let arch = Architecture::of_family(config.family, base.path())?;
    let hyper = hyperparameters(config, base.path())?;
    let vocab = match base.gguf() {
        Some(file) => copied_vocab(file),
        None => vocab_of_dir(base.path(), config)?,
    };
    let name = base
        .path()
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().into_owned());
    let mut metadata = vec![
        ("general.architecture".to_string(), Value::String(arch.name().into())),
        ("general.name".into(), Value::String(name)),
        ("general.file_type".into(), Value::U32(file_type.id())),
        ("general.quantization_version".into(), Value::U32(2)),
    ];
    metadata.extend(hyper.metadata);
    metadata.extend(vocab);

    let params = named_params(model);
    let mut plans = Vec::with_capacity(params.len());
    for param in &params {
        let name = gguf_name(arch, &param.name).ok_or_else(|| ModelError::Config {
            path: base.path().to_path_buf(),
            key: param.name.clone(),
            message: match param.name.contains(".lora.") {
                true => "the model still carries adapters: merge them first".into(),
                false => format!("llama.cpp's {} has no tensor for this parameter", arch.name()),
            },
        })?;
        let dims: Vec<usize> = param.shape.iter().rev().copied().collect();
        let ty = match dims.len() {
            1 => GgmlType::F32,
            _ => file_type.matrix_type(&name, dims[0], config.num_hidden_layers()),
        };
        plans.push(TensorPlan { name, dims, ty });
    }
    // The queries carry the difference between the config's query scale and llama.cpp's fixed
    // one: in Gemma 3 through the q/k-normed query's weight, before that through q_proj.
    let scaled = match arch {
        Architecture::Gemma3 => "self_attn.q_norm.weight",
        Architecture::Gemma | Architecture::Gemma2 => "self_attn.q_proj.weight",
    };
    let mut index = 0;
    write_gguf(path, &metadata, &plans, |plan| {
        let param = &params[index];
        index += 1;
        let data = param.values.clone().into_data().convert_dtype(DType::F32);
        let mut values = data.to_vec::<f32>().map_err(|e| ModelError::Gguf {
            path: path.to_path_buf(),
            message: format!("tensor `{}`: {e:?}", param.name),
        })?;
        if is_shifted_norm(&param.name) {
            values.iter_mut().for_each(|v| *v += 1.0);
        }
        if hyper.query_factor != 1.0 && param.name.ends_with(scaled) {
            values.iter_mut().for_each(|v| *v *= hyper.query_factor);
        }
        Ok(quantize(plan.ty, &values).expect("export types are ones Ember quantizes"))
    })
}
