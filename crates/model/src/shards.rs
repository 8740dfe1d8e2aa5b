//! Writing a checkpoint's weights as Hugging Face does: `model.safetensors`, or shards
//! `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json` when they exceed
//! the shard size. Tensors stream through: one shard is in memory at a time.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::{DType, TensorData};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::Value;

use crate::error::{ModelError, Result};

/// Shards hold at most this many bytes (transformers' default is 5 GB).
pub const MAX_SHARD_BYTES: usize = 2 << 30;

/// One tensor to write: its name, shape and values (cast to the file's dtype on writing).
pub type NamedTensor = (String, Vec<usize>, TensorData);

/// transformers' name of a dtype (`torch_dtype` in `config.json`); only these are written.
pub fn torch_dtype_name(dtype: DType) -> Option<&'static str> {
    match dtype {
        DType::F32 => Some("float32"),
        DType::BF16 => Some("bfloat16"),
        DType::F16 => Some("float16"),
        _ => None,
    }
}

/// Writes `tensors` into `dir` in `dtype` (f32, bf16 or f16), a new shard whenever the current
/// one would exceed `max_shard_bytes`.
pub fn write_safetensors(
    dir: &Path,
    tensors: impl IntoIterator<Item = Result<NamedTensor>>,
    dtype: DType,
    max_shard_bytes: usize,
) -> Result<()> {
    let file_dtype = match dtype {
        DType::F32 => Dtype::F32,
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        other => {
            return Err(ModelError::Config {
                path: dir.to_path_buf(),
                key: "dtype".into(),
                message: format!("cannot write weights in {other:?}; use f32, bf16 or f16"),
            });
        }
    };
    // Shards are numbered once their count is known: written under a provisional name first.
    let provisional = |i: usize| dir.join(format!("model-{:05}.safetensors.partial", i + 1));
    let mut shard: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut shard_bytes = 0;
    let mut names_per_shard: Vec<Vec<String>> = Vec::new();
    let mut total = 0;
    for tensor in tensors {
        let (name, shape, data) = tensor?;
        let bytes = data.convert_dtype(dtype).into_bytes().to_vec();
        if shard_bytes > 0 && shard_bytes + bytes.len() > max_shard_bytes {
            names_per_shard.push(write_shard(&provisional(names_per_shard.len()), &shard, file_dtype)?);
            shard.clear();
            shard_bytes = 0;
        }
        shard_bytes += bytes.len();
        total += bytes.len();
        shard.push((name, shape, bytes));
    }
    names_per_shard.push(write_shard(&provisional(names_per_shard.len()), &shard, file_dtype)?);

    let count = names_per_shard.len();
    if count == 1 {
        let path = dir.join("model.safetensors");
        return std::fs::rename(provisional(0), &path).map_err(|e| ModelError::io(&path, e));
    }
    let mut weight_map = serde_json::Map::new();
    for (i, names) in names_per_shard.into_iter().enumerate() {
        let file = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
        let path = dir.join(&file);
        std::fs::rename(provisional(i), &path).map_err(|e| ModelError::io(&path, e))?;
        for name in names {
            weight_map.insert(name, Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    write_json(&dir.join("model.safetensors.index.json"), &index)
}

/// Writes one shard; returns the names it holds.
fn write_shard(path: &Path, tensors: &[(String, Vec<usize>, Vec<u8>)], dtype: Dtype) -> Result<Vec<String>> {
    let error = |e: safetensors::SafeTensorError| ModelError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| TensorView::new(dtype, shape.clone(), bytes).map(|v| (name.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(error)?;
    // transformers refuses safetensors files without this marker.
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(error)?;
    Ok(tensors.iter().map(|(name, _, _)| name.clone()).collect())
}

/// Writes `value` as pretty JSON with a final newline.
pub fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("a JSON value serialises");
    std::fs::write(path, text + "\n").map_err(|e| ModelError::io(path, e))
}
