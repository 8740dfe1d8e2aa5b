//! The tensors of a GGUF file under their Hugging Face names, in Hugging Face layout and values.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use burn::tensor::{DType, TensorData};

use super::arch::Architecture;
use super::names::{hf_name, is_shifted_norm};
use super::reader::{GgufFile, TensorInfo};
use super::types::GgmlType;
use crate::error::{ModelError, Result};
use crate::weights::TensorSource;

/// A GGUF file whose every tensor has a Hugging Face name.
pub struct GgufWeights<'a> {
    file: &'a GgufFile,
    /// Hugging Face name → index in the file's tensor directory.
    index: BTreeMap<String, usize>,
    used: HashSet<String>,
}

impl<'a> GgufWeights<'a> {
    /// Maps every tensor of `file`; one without a Hugging Face counterpart is an error naming it.
    pub fn new(file: &'a GgufFile) -> Result<Self> {
        let arch = Architecture::of(file)?;
        let mut index = BTreeMap::new();
        let mut foreign = Vec::new();
        for (i, info) in file.tensors().iter().enumerate() {
            match hf_name(arch, &info.name) {
                Some(name) => {
                    index.insert(name, i);
                }
                None => foreign.push(info.name.clone()),
            }
        }
        if let Some(first) = foreign.first() {
            return Err(ModelError::UnexpectedTensors {
                dir: file.path().to_path_buf(),
                count: foreign.len(),
                first: first.clone(),
            });
        }
        Ok(Self {
            file,
            index,
            used: HashSet::new(),
        })
    }

    pub fn file(&self) -> &GgufFile {
        self.file
    }

    /// The Hugging Face names, in the file's order.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<(&usize, &String)> = self.index.iter().map(|(name, i)| (i, name)).collect();
        names.sort();
        names.into_iter().map(|(_, name)| name.as_str()).collect()
    }

    /// Values in all tensors, for progress reporting.
    pub fn element_count(&self) -> u64 {
        self.file.tensors().iter().map(|t| t.element_count() as u64).sum()
    }

    /// The tensor `name` in Hugging Face terms: its PyTorch shape (GGUF's dimensions reversed;
    /// the data needs no transposing) and its values, dequantized, norms shifted back from
    /// llama.cpp's `1 + w` to `w`.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let info = self.info(name)?;
        let mut values = self.file.read_f32(info)?;
        if is_shifted_norm(name) {
            values.iter_mut().for_each(|v| *v -= 1.0);
        }
        Ok((info.shape(), values))
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.index
            .get(name)
            .map(|&i| &self.file.tensors()[i])
            .ok_or_else(|| ModelError::MissingTensor {
                dir: self.file.path().to_path_buf(),
                key: name.to_string(),
            })
    }

    /// Fails if the file holds tensors the model never read.
    pub fn finish(self) -> Result<()> {
        let unused = self.unused();
        match unused.first() {
            None => Ok(()),
            Some(first) => Err(ModelError::UnexpectedTensors {
                dir: self.file.path().to_path_buf(),
                count: unused.len(),
                first: first.to_string(),
            }),
        }
    }
}

impl TensorSource for GgufWeights<'_> {
    fn read(&mut self, key: &str, shape: &[usize], dtype: DType) -> Result<TensorData> {
        let found = self.info(key)?.shape();
        if found != shape {
            return Err(ModelError::ShapeMismatch {
                path: self.file.path().to_path_buf(),
                key: key.to_string(),
                found,
                expected: shape.to_vec(),
            });
        }
        let (shape, values) = self.read_f32(key)?;
        self.used.insert(key.to_string());
        Ok(TensorData::new(values, shape).convert_dtype(dtype))
    }

    fn check(&mut self, key: &str, shape: &[usize]) -> Result<()> {
        // A present tensor is accounted for even when wrong: one problem, not also "unused".
        if self.index.contains_key(key) {
            self.used.insert(key.to_string());
        }
        let info = self.info(key)?;
        let found = info.shape();
        if found != shape {
            return Err(ModelError::ShapeMismatch {
                path: self.file.path().to_path_buf(),
                key: key.to_string(),
                found,
                expected: shape.to_vec(),
            });
        }
        if GgmlType::from_id(info.type_id).is_none() {
            return Err(ModelError::UnsupportedGgmlType {
                path: self.file.path().to_path_buf(),
                tensor: info.name.clone(),
                ggml_type: info.type_name(),
            });
        }
        Ok(())
    }

    fn skip(&mut self, key: &str) {
        self.used.insert(key.to_string());
    }

    fn unused(&self) -> Vec<String> {
        self.index.keys().filter(|k| !self.used.contains(*k)).cloned().collect()
    }

    fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// GGUF files hold no bitsandbytes tensors: what is read exactly is only ever those.
    fn read_exact(&mut self, key: &str, _shape: Option<&[usize]>, dtype: DType) -> Result<TensorData> {
        Err(ModelError::UnsupportedDtype {
            path: self.file.path().to_path_buf(),
            key: key.to_string(),
            dtype: format!("a GGUF tensor where bitsandbytes' {dtype:?} was expected"),
        })
    }

    fn path(&self) -> PathBuf {
        self.file.path().to_path_buf()
    }
}
