//! Which Gemma generation a GGUF file holds (`general.architecture`).

use super::reader::GgufFile;
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

    pub fn name(self) -> &'static str {
        match self {
            Self::Gemma => "gemma",
            Self::Gemma2 => "gemma2",
            Self::Gemma3 => "gemma3",
        }
    }
}
