//! Which Gemma generation a GGUF file holds (`general.architecture`).

use std::path::Path;

use super::reader::GgufFile;
use crate::config::Family;
use crate::error::{ModelError, Result};

/// A GGUF architecture Ember imports; its name prefixes the model's metadata keys
/// (`gemma3.block_count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Gemma,
    Gemma2,
    Gemma3,
}

impl Architecture {
    pub fn of(file: &GgufFile) -> Result<Self> {
        let key = "general.architecture";
        let name = file
            .get(key)
            .and_then(|v| v.as_str())
            .ok_or_else(|| ModelError::Config {
                path: file.path().to_path_buf(),
                key: key.into(),
                message: "missing or not a string".into(),
            })?;
        match name {
            "gemma" => Ok(Self::Gemma),
            "gemma2" => Ok(Self::Gemma2),
            "gemma3" => Ok(Self::Gemma3),
            other => Err(ModelError::UnknownArchitecture {
                path: file.path().to_path_buf(),
                found: other.to_string(),
            }),
        }
    }

    /// The architecture llama.cpp runs a model of this family as; Ember's GGUF export covers
    /// Gemma 1 to 3 (`path` names the model in the error).
    pub fn of_family(family: Family, path: &Path) -> Result<Self> {
        match family {
            Family::Gemma => Ok(Self::Gemma),
            Family::Gemma2 => Ok(Self::Gemma2),
            Family::Gemma3 => Ok(Self::Gemma3),
            Family::Gemma3n | Family::Gemma4 => Err(ModelError::Config {
                path: path.to_path_buf(),
                key: "model_type".into(),
                message: format!("Ember's GGUF export writes Gemma 1 to 3, not {family:?}"),
            }),
        }
    }

    /// The query scale llama.cpp applies (`scores · scalar^-0.5`), which GGUF cannot state: the
    /// 27B models (known by their layer count) use hidden/heads, the others `head_dim`, as in
    /// gemma_pytorch's configs (llama-model.cpp's `f_attention_scale`).
    pub fn query_pre_attn_scalar(self, layers: usize, hidden: usize, heads: usize, head_dim: usize) -> usize {
        match (self, layers) {
            (Self::Gemma2, 46) | (Self::Gemma3, 62) => hidden / heads,
            _ => head_dim,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Gemma => "gemma",
            Self::Gemma2 => "gemma2",
            Self::Gemma3 => "gemma3",
        }
    }
}
