//! Writing the GGUF container (version 3, little-endian), the layout [`super::reader`] parses:
//! header, metadata, tensor directory, then each tensor's data at a 32-byte aligned offset.
//! Tensor data is produced one tensor at a time, so a model never sits in memory twice.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::reader::Value;
use super::types::GgmlType;
use crate::error::{ModelError, Result};

const VERSION: u32 = 3;
/// gguf's default `general.alignment`, which readers assume when the key is absent.
const ALIGNMENT: u64 = 32;

/// A tensor to be written: its llama.cpp name, ggml's `ne` (innermost first) and type.
#[derive(Debug, Clone)]
pub struct TensorPlan {
    pub name: String,
    pub dims: Vec<usize>,
    pub ty: GgmlType,
}

impl TensorPlan {
    /// Bytes of the tensor's data.
    pub fn byte_len(&self) -> usize {
        let (elements, bytes) = self.ty.block();
        self.dims.iter().product::<usize>() / elements * bytes
    }
}

/// Writes a GGUF file at `path`: `metadata` in order, then `tensors`, whose bytes `data` makes
/// for each in turn (it must return [`TensorPlan::byte_len`] bytes).
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, Value)],
    tensors: &[TensorPlan],
    mut data: impl FnMut(&TensorPlan) -> Result<Vec<u8>>,
) -> Result<()> {
    let io = |e: std::io::Error| ModelError::io(path, e);
    let file = File::create(path).map_err(io)?;
    let mut out = Counted {
        inner: BufWriter::with_capacity(1 << 20, file),
        written: 0,
    };
    out.bytes(b"GGUF").map_err(io)?;
    out.bytes(&VERSION.to_le_bytes()).map_err(io)?;
    out.bytes(&(tensors.len() as u64).to_le_bytes()).map_err(io)?;
    out.bytes(&(metadata.len() as u64).to_le_bytes()).map_err(io)?;
    for (key, value) in metadata {
        out.string(key).map_err(io)?;
        let type_id = value_type(value).ok_or_else(|| ModelError::Gguf {
            path: path.to_path_buf(),
            message: format!("metadata `{key}` is an array of mixed types, which GGUF cannot store"),
        })?;
        out.bytes(&type_id.to_le_bytes()).map_err(io)?;
        out.value(value).map_err(io)?;
    }
    let mut offset = 0u64;
    for tensor in tensors {
        out.string(&tensor.name).map_err(io)?;
        out.bytes(&(tensor.dims.len() as u32).to_le_bytes()).map_err(io)?;
        for &d in &tensor.dims {
            out.bytes(&(d as u64).to_le_bytes()).map_err(io)?;
        }
        out.bytes(&ggml_type_id(tensor.ty).to_le_bytes()).map_err(io)?;
        out.bytes(&offset.to_le_bytes()).map_err(io)?;
        offset = (offset + tensor.byte_len() as u64).next_multiple_of(ALIGNMENT);
    }
    out.pad().map_err(io)?;
    for tensor in tensors {
        let bytes = data(tensor)?;
        if bytes.len() != tensor.byte_len() {
            return Err(ModelError::Gguf {
                path: path.to_path_buf(),
                message: format!(
                    "tensor `{}` came as {} bytes; its {} shape {:?} takes {}",
                    tensor.name,
                    bytes.len(),
                    tensor.ty.name(),
                    tensor.dims,
                    tensor.byte_len()
                ),
            });
        }
        out.bytes(&bytes).map_err(io)?;
        out.pad().map_err(io)?;
    }
    let file = out.inner.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)
}

/// ggml's id of a type (the inverse of [`GgmlType::from_id`]).
fn ggml_type_id(ty: GgmlType) -> u32 {
    (0..64)
        .find(|&id| GgmlType::from_id(id) == Some(ty))
        .expect("every GgmlType has an id")
}

/// gguf.h's `gguf_type` of a value; `None` for an array whose items differ in type.
fn value_type(value: &Value) -> Option<u32> {
    Some(match value {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(items) => {
            let first = items.first().map_or(Some(8), value_type)?;
            if items.iter().any(|v| value_type(v) != Some(first)) {
                return None;
            }
            9
        }
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    })
}

/// A writer that knows its position, for alignment.
struct Counted<W: Write> {
    inner: W,
    written: u64,
}

impl<W: Write> Counted<W> {
    fn bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.written += bytes.len() as u64;
        self.inner.write_all(bytes)
    }

    fn string(&mut self, s: &str) -> std::io::Result<()> {
        self.bytes(&(s.len() as u64).to_le_bytes())?;
        self.bytes(s.as_bytes())
    }

    fn pad(&mut self) -> std::io::Result<()> {
        let padding = self.written.next_multiple_of(ALIGNMENT) - self.written;
        self.bytes(&vec![0u8; padding as usize])
    }

    fn value(&mut self, value: &Value) -> std::io::Result<()> {
        match value {
            Value::U8(v) => self.bytes(&[*v]),
            Value::I8(v) => self.bytes(&v.to_le_bytes()),
            Value::U16(v) => self.bytes(&v.to_le_bytes()),
            Value::I16(v) => self.bytes(&v.to_le_bytes()),
            Value::U32(v) => self.bytes(&v.to_le_bytes()),
            Value::I32(v) => self.bytes(&v.to_le_bytes()),
            Value::U64(v) => self.bytes(&v.to_le_bytes()),
            Value::I64(v) => self.bytes(&v.to_le_bytes()),
            Value::F32(v) => self.bytes(&v.to_le_bytes()),
            Value::F64(v) => self.bytes(&v.to_le_bytes()),
            Value::Bool(v) => self.bytes(&[u8::from(*v)]),
            Value::String(s) => self.string(s),
            Value::Array(items) => {
                let item_type = items.first().and_then(value_type).unwrap_or(8);
                self.bytes(&item_type.to_le_bytes())?;
                self.bytes(&(items.len() as u64).to_le_bytes())?;
                items.iter().try_for_each(|item| self.value(item))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::reader::GgufFile;
    use super::*;

    #[test]
    fn a_written_file_reads_back_with_its_metadata_and_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let metadata = vec![
            ("general.architecture".to_string(), Value::String("gemma3".into())),
            ("a.u32".into(), Value::U32(7)),
            ("a.f32".into(), Value::F32(1e-6)),
            ("a.bool".into(), Value::Bool(false)),
            (
                "a.strings".into(),
                Value::Array(vec![Value::String("x".into()), Value::String("▁y".into())]),
            ),
            (
                "a.nested".into(),
                Value::Array(vec![Value::Array(vec![Value::I32(-1)])]),
            ),
        ];
        let tensors = vec![
            TensorPlan {
                name: "odd".into(),
                dims: vec![3],
                ty: GgmlType::F32,
            },
            TensorPlan {
                name: "m".into(),
                dims: vec![32, 2],
                ty: GgmlType::Q8_0,
            },
        ];
        let values: Vec<f32> = (0..64).map(|i| i as f32 - 20.0).collect();
        write_gguf(&path, &metadata, &tensors, |t| {
            Ok(match t.ty {
                GgmlType::F32 => [1f32, 2.0, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect(),
                ty => super::super::quantize::quantize(ty, &values).unwrap(),
            })
        })
        .unwrap();
        let file = GgufFile::open(&path).unwrap();
        for (key, value) in &metadata {
            assert_eq!(file.get(key), Some(value), "{key}");
        }
        assert_eq!(file.read_f32(file.tensor("odd").unwrap()).unwrap(), [1.0, 2.0, 3.0]);
        let m = file.tensor("m").unwrap();
        assert_eq!(m.shape(), [2, 32]);
        let back = file.read_f32(m).unwrap();
        // Integers up to 43 in blocks whose maximum is 20 or 43: within half a step.
        for (b, v) in back.iter().zip(&values) {
            assert!((b - v).abs() <= 43.0 / 127.0 / 2.0 + 1e-6, "{b} vs {v}");
        }
    }

    #[test]
    fn mixed_arrays_and_wrong_sized_data_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let mixed = vec![("k".to_string(), Value::Array(vec![Value::U8(1), Value::I32(2)]))];
        let err = write_gguf(&path, &mixed, &[], |_| Ok(vec![])).unwrap_err();
        assert!(err.to_string().contains("`k`"), "{err}");
        let tensor = TensorPlan {
            name: "t".into(),
            dims: vec![4],
            ty: GgmlType::F32,
        };
        let err = write_gguf(&path, &[], &[tensor], |_| Ok(vec![0; 3])).unwrap_err();
        assert!(err.to_string().contains("`t` came as 3 bytes"), "{err}");
    }
}
