//! Reading tensors out of a Hugging Face checkpoint directory: `model.safetensors`, or the
//! shards listed in `model.safetensors.index.json`, memory-mapped.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::{ModelError, Result};

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

/// The safetensors files of a checkpoint and the tensors they hold.
///
/// Reading is strict: every tensor read is checked against the shape the config implies,
/// and [`Checkpoint::finish`] fails if any tensor was never read.
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<Shard>,
    tensors: BTreeMap<String, Entry>,
    used: HashSet<String>,
}

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// Byte offset of the data section (after the header).
    data_start: usize,
}

struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    offsets: (usize, usize),
}

impl Checkpoint {
    /// Opens the weights of the checkpoint in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join(SINGLE_FILE);
        let index = dir.join(INDEX_FILE);
        let shard_names: Vec<String> = if index.exists() {
            shard_names(&index)?
        } else if single.exists() {
            vec![SINGLE_FILE.to_string()]
        } else {
            return Err(ModelError::NoWeights { dir: dir.to_path_buf() });
        };

        let mut files = Vec::new();
        let mut tensors = BTreeMap::new();
        for name in shard_names {
            let path = dir.join(&name);
            let file = File::open(&path).map_err(|e| ModelError::io(&path, e))?;
            // SAFETY: the file is only read; a checkpoint modified while Ember runs is the
            // same hazard as for every memory-mapped loader (transformers included).
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
            let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| ModelError::Safetensors {
                path: path.clone(),
                message: e.to_string(),
            })?;
            for (key, info) in metadata.tensors() {
                let entry = Entry {
                    shard: files.len(),
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    offsets: info.data_offsets,
                };
                tensors.insert(key, entry);
            }
            files.push(Shard {
                path,
                mmap,
                data_start: 8 + header_len,
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            tensors,
            used: HashSet::new(),
        })
    }

    /// Total bytes of tensor data, for progress reporting.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.values().map(|e| (e.offsets.1 - e.offsets.0) as u64).sum()
    }

    /// Whether the checkpoint holds `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// Reads `key`, checking its shape, converted to `dtype`.
    pub fn read(&mut self, key: &str, shape: &[usize], dtype: DType) -> Result<TensorData> {
        let (entry, disk_dtype) = self.entry(key, shape)?;
        if disk_dtype == DType::U8 {
            return Err(self.unsupported(key, "U8"));
        }
        let shard = &self.files[entry.shard];
        let bytes = &shard.mmap[shard.data_start + entry.offsets.0..shard.data_start + entry.offsets.1];
        let data = TensorData::from_bytes_vec(bytes.to_vec(), shape.to_vec(), disk_dtype);
        self.used.insert(key.to_string());
        Ok(if disk_dtype == dtype {
            data
        } else {
            data.convert_dtype(dtype)
        })
    }

    /// Reads `key` as stored, which must be `dtype` (and `shape`, if given): the parts of a
    /// bitsandbytes 4-bit weight, whose bytes are codes, not numbers to convert.
    pub fn read_exact(&mut self, key: &str, shape: Option<&[usize]>, dtype: DType) -> Result<TensorData> {
        let stored = self.tensors.get(key).map(|e| e.shape.clone()).unwrap_or_default();
        let shape = shape.map_or(stored, <[usize]>::to_vec);
        let (entry, disk_dtype) = self.entry(key, &shape)?;
        if disk_dtype != dtype {
            return Err(self.unsupported(key, &format!("{disk_dtype:?} where {dtype:?} was expected")));
        }
        let shard = &self.files[entry.shard];
        let bytes = &shard.mmap[shard.data_start + entry.offsets.0..shard.data_start + entry.offsets.1];
        let data = TensorData::from_bytes_vec(bytes.to_vec(), shape, disk_dtype);
        self.used.insert(key.to_string());
        Ok(data)
    }

    fn unsupported(&self, key: &str, dtype: &str) -> ModelError {
        let shard = self.tensors.get(key).map_or(&self.dir, |e| &self.files[e.shard].path);
        ModelError::UnsupportedDtype {
            path: shard.clone(),
            key: key.to_string(),
            dtype: dtype.to_string(),
        }
    }

    /// The checkpoint's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checks that `key` is present with `shape` and a readable dtype, without reading it.
    pub fn check(&mut self, key: &str, shape: &[usize]) -> Result<()> {
        // A present tensor is accounted for even when wrong: one problem, not also "unused".
        if self.tensors.contains_key(key) {
            self.used.insert(key.to_string());
        }
        self.entry(key, shape).map(drop)
    }

    /// The entry of `key` and its dtype, checked against `shape`.
    fn entry(&self, key: &str, shape: &[usize]) -> Result<(&Entry, DType)> {
        let entry = self.tensors.get(key).ok_or_else(|| ModelError::MissingTensor {
            dir: self.dir.clone(),
            key: key.to_string(),
        })?;
        let shard = &self.files[entry.shard];
        if entry.shape != shape {
            return Err(ModelError::ShapeMismatch {
                path: shard.path.clone(),
                key: key.to_string(),
                found: entry.shape.clone(),
                expected: shape.to_vec(),
            });
        }
        let disk_dtype = match entry.dtype {
            Dtype::F32 => DType::F32,
            Dtype::BF16 => DType::BF16,
            Dtype::F16 => DType::F16,
            Dtype::U8 => DType::U8,
            other => {
                return Err(ModelError::UnsupportedDtype {
                    path: shard.path.clone(),
                    key: key.to_string(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        Ok((entry, disk_dtype))
    }

    /// Marks `key` as deliberately unused (e.g. an `lm_head.weight` tied to the embedding).
    pub fn skip(&mut self, key: &str) {
        self.used.insert(key.to_string());
    }

    /// The tensors neither read, checked nor skipped, by name.
    pub fn unused(&self) -> Vec<String> {
        self.tensors
            .keys()
            .filter(|k| !self.used.contains(*k))
            .cloned()
            .collect()
    }

    /// Fails if the checkpoint holds tensors the model never read.
    pub fn finish(self) -> Result<()> {
        let unused = self.unused();
        match unused.first() {
            None => Ok(()),
            Some(first) => Err(ModelError::UnexpectedTensors {
                dir: self.dir,
                count: unused.len(),
                first: first.to_string(),
            }),
        }
    }
}

/// The distinct shard files named by an index, in a stable order.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: index.to_path_buf(),
        source,
    })?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::Config {
            path: index.to_path_buf(),
            key: "weight_map".into(),
            message: "missing or not an object".into(),
        })?;
    let mut names: Vec<String> = Vec::new();
    for (key, file) in map {
        let file = file.as_str().ok_or_else(|| ModelError::Config {
            path: index.to_path_buf(),
            key: format!("weight_map.{key}"),
            message: "expected a file name".into(),
        })?;
        if !names.iter().any(|n| n == file) {
            names.push(file.to_string());
        }
    }
    names.sort();
    Ok(names)
}
