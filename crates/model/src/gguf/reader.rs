//! The GGUF container (versions 2 and 3, little-endian): header, metadata and tensor directory,
//! parsed from a memory map; tensor data is read on demand.
//!
//! Layout: magic `GGUF`, version `u32`, tensor count `u64`, metadata count `u64`; metadata as
//! (key string, type `u32`, value); per tensor its name, `n_dims: u32`, `ne: [u64; n_dims]`
//! (innermost first), ggml type `u32`, offset `u64`; then the data section, aligned to
//! `general.alignment` (32 by default). Strings are a `u64` length and UTF-8 bytes.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::dequant::dequantize;
use super::types::{GgmlType, type_name};
use crate::error::{ModelError, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays exist; deeper nesting than this is a corrupt file, not a real one.
const MAX_NESTING: usize = 8;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// Any integer that is not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Any number. An f32 becomes the f64 of its shortest decimal form: the `1e-6` a converter
    /// wrote, not `9.99999997e-7`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => v.to_string().parse().ok(),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml's `ne`, innermost dimension first: the reverse of the PyTorch shape.
    pub dims: Vec<usize>,
    /// ggml's type id; see [`GgmlType::from_id`].
    pub type_id: u32,
    /// Start of the data, relative to the data section.
    offset: usize,
}

impl TensorInfo {
    /// The shape as PyTorch and Hugging Face write it: an `[out, in]` weight has `ne = [in, out]`.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }

    pub fn element_count(&self) -> usize {
        self.dims.iter().product()
    }

    /// ggml's name of the tensor's type.
    pub fn type_name(&self) -> String {
        type_name(self.type_id)
    }
}

/// A memory-mapped GGUF file with its metadata and tensor directory parsed.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
    data_start: usize,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: the file is only read; a file modified while Ember runs is the same hazard
        // as for every memory-mapped loader (llama.cpp included).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let error = |message: String| ModelError::Gguf {
            path: path.to_path_buf(),
            message,
        };
        let (metadata, tensors, data_start) = parse(&mmap).map_err(error)?;
        let gguf = Self {
            path: path.to_path_buf(),
            mmap,
            metadata,
            tensors,
            data_start,
        };
        // Every tensor Ember can read must lie inside the file: a truncated download fails here.
        for info in &gguf.tensors {
            if let Some(ty) = GgmlType::from_id(info.type_id) {
                gguf.data_range(info, ty).map_err(error)?;
            }
        }
        Ok(gguf)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// Every metadata key and value, by key.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The tensor directory, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The values of a tensor as f32, dequantized exactly as ggml does, in ggml's (row-major,
    /// innermost-first) order, which is the PyTorch order of [`TensorInfo::shape`].
    pub fn read_f32(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        let bytes = self.tensor_bytes(info)?;
        let ty = GgmlType::from_id(info.type_id).expect("tensor_bytes checked the type");
        Ok(dequantize(ty, bytes))
    }

    /// The stored bytes of a tensor, as they are (quantized blocks included).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> Result<&[u8]> {
        let ty = GgmlType::from_id(info.type_id).ok_or_else(|| ModelError::UnsupportedGgmlType {
            path: self.path.clone(),
            tensor: info.name.clone(),
            ggml_type: info.type_name(),
        })?;
        let (start, end) = self.data_range(info, ty).map_err(|message| ModelError::Gguf {
            path: self.path.clone(),
            message,
        })?;
        Ok(&self.mmap[start..end])
    }

    /// Where the bytes of a tensor of type `ty` lie in the file, checked against its end.
    fn data_range(&self, info: &TensorInfo, ty: GgmlType) -> std::result::Result<(usize, usize), String> {
        let (block_elements, block_bytes) = ty.block();
        let row = info.dims.first().copied().unwrap_or(1);
        if !row.is_multiple_of(block_elements) {
            return Err(format!(
                "tensor `{}` has rows of {row} values, not a whole number of {}-value {} blocks",
                info.name,
                block_elements,
                ty.name()
            ));
        }
        let start = self.data_start.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(info.element_count() / block_elements * block_bytes));
        match (start, end) {
            (Some(start), Some(end)) if end <= self.mmap.len() => Ok((start, end)),
            _ => Err(format!(
                "truncated: tensor `{}` needs bytes up to {} but the file has {}",
                info.name,
                end.map_or("beyond 2^64".to_string(), |e| e.to_string()),
                self.mmap.len()
            )),
        }
    }
}

type Parsed = (BTreeMap<String, Value>, Vec<TensorInfo>, usize);

fn parse(bytes: &[u8]) -> std::result::Result<Parsed, String> {
    let mut r = Reader { bytes, pos: 0 };
    if r.take(4, "the magic number")? != MAGIC {
        return Err("it does not start with `GGUF` (is it a GGUF model?)".into());
    }
    let version = r.u32("the version")?;
    match version {
        2 | 3 => {}
        1 => return Err("GGUF version 1 is not supported; re-convert it with a current llama.cpp".into()),
        v if v.swap_bytes() <= 3 => return Err("big-endian GGUF files are not supported".into()),
        v => return Err(format!("unknown GGUF version {v}")),
    }
    let tensor_count = r.u64("the tensor count")?;
    let kv_count = r.u64("the metadata count")?;

    let mut metadata = BTreeMap::new();
    for _ in 0..kv_count {
        let key = r.string("a metadata key")?;
        let type_id = r.u32("a metadata type")?;
        let value = r.value(type_id, &key, 0)?;
        metadata.insert(key, value);
    }

    let mut tensors = Vec::new();
    for _ in 0..tensor_count {
        let name = r.string("a tensor name")?;
        let n_dims = r.u32("a tensor's dimension count")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!(
                "tensor `{name}` has {n_dims} dimensions; ggml allows 1 to {MAX_DIMS}"
            ));
        }
        let dims = (0..n_dims)
            .map(|_| r.u64("a tensor dimension").and_then(|d| usize_of(d, &name)))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).is_none() {
            return Err(format!("tensor `{name}` has an impossible shape {dims:?}"));
        }
        let type_id = r.u32("a tensor type")?;
        let offset = usize_of(r.u64("a tensor offset")?, &name)?;
        tensors.push(TensorInfo {
            name,
            dims,
            type_id,
            offset,
        });
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => v
            .as_u64()
            .filter(|a| a.is_power_of_two())
            .ok_or_else(|| format!("general.alignment is {v:?}; expected a power of two"))?,
    };
    let data_start = (r.pos as u64).next_multiple_of(alignment);
    Ok((metadata, tensors, usize_of(data_start, "the data section")?))
}

fn usize_of(v: u64, what: &str) -> std::result::Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("`{what}`: {v} does not fit this machine's address space"))
}

/// A bounds-checked cursor over the header.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
        match self.pos.checked_add(n).filter(|&end| end <= self.bytes.len()) {
            Some(end) => {
                let slice = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(slice)
            }
            None => Err(format!(
                "truncated: the file ends at byte {} while reading {what}",
                self.bytes.len()
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        Ok(self.take(N, what)?.try_into().expect("take returns N bytes"))
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let len = usize_of(self.u64(what)?, what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not valid UTF-8"))
    }

    /// A value of GGUF type `type_id` (gguf.h's `gguf_type`).
    fn value(&mut self, type_id: u32, key: &str, depth: usize) -> std::result::Result<Value, String> {
        let what = format!("the value of `{key}`");
        Ok(match type_id {
            0 => Value::U8(self.array::<1>(&what)?[0]),
            1 => Value::I8(self.array::<1>(&what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(&what)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => match self.array::<1>(&what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("`{key}` is a bool with byte value {b}")),
            },
            8 => Value::String(self.string(&what)?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(format!("`{key}` nests arrays deeper than {MAX_NESTING}"));
                }
                let item_type = self.u32(&what)?;
                let len = self.u64(&what)?;
                // No allocation from the untrusted count: a truncated file fails on reading.
                let mut items = Vec::new();
                for _ in 0..len {
                    items.push(self.value(item_type, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(u64::from_le_bytes(self.array(&what)?)),
            11 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            other => return Err(format!("`{key}` has unknown value type {other}")),
        })
    }
}
