//! Reading a weight that transformers saved quantized (`quantization_config` with
//! `quant_method = "bitsandbytes"`): beside `<module>.weight` (the packed bytes, `uint8`
//! `[bytes, 1]`) it stores `.absmax`, `.quant_map`, with double quantization
//! `.nested_absmax` and `.nested_quant_map`, and `.quant_state.bitsandbytes__<nf4|fp4>`, the
//! JSON of the rest (type, block size, dtype, shape, offset).

use burn::tensor::DType;
use serde::Deserialize;

use super::dynamic::dynamic_map;
use super::four_bit::{Absmax, FourBit, NESTED_BLOCKSIZE, NestedAbsmax, QuantType};
use crate::error::{ModelError, Result};
use crate::weights::TensorSource;

#[derive(Deserialize)]
struct QuantState {
    quant_type: String,
    blocksize: usize,
    dtype: String,
    shape: Vec<usize>,
    nested_blocksize: Option<usize>,
    nested_offset: Option<f64>,
}

/// The 4-bit weight `key` (`<module>.weight`) of `shape` `[out, in]` and the dtype it was
/// quantized from, if the source holds it quantized.
pub(crate) fn read_four_bit(
    source: &mut dyn TensorSource,
    key: &str,
    shape: [usize; 2],
) -> Result<Option<(FourBit, DType)>> {
    let Some(state_key) = ["nf4", "fp4"]
        .iter()
        .map(|t| format!("{key}.quant_state.bitsandbytes__{t}"))
        .find(|k| source.contains(k))
    else {
        return Ok(None);
    };
    let path = source.path();
    let bad = |message: String| ModelError::Config {
        path: path.clone(),
        key: key.to_string(),
        message: format!("a bitsandbytes 4-bit weight Ember cannot read: {message}"),
    };
    let json = source
        .read_exact(&state_key, None, DType::U8)?
        .into_vec::<u8>()
        .map_err(|e| bad(format!("{e:?}")))?;
    let state: QuantState = serde_json::from_slice(&json).map_err(|e| bad(format!("`{state_key}`: {e}")))?;
    let quant_type: QuantType = state.quant_type.parse().map_err(bad)?;
    if state.shape != shape {
        return Err(bad(format!(
            "its quant_state has shape {:?}, config.json implies {shape:?}",
            state.shape
        )));
    }
    if !state.blocksize.is_power_of_two() || !(32..=4096).contains(&state.blocksize) {
        return Err(bad(format!(
            "block size {} (bitsandbytes uses 32 … 4096, powers of two)",
            state.blocksize
        )));
    }
    let dtype = match state.dtype.as_str() {
        "float32" => DType::F32,
        "bfloat16" => DType::BF16,
        "float16" => DType::F16,
        other => return Err(bad(format!("dtype `{other}`"))),
    };
    let len = shape[0] * shape[1];
    let blocks = len.div_ceil(state.blocksize);
    let table = source.read_exact(&format!("{key}.quant_map"), Some(&[16]), DType::F32)?;
    if table.into_vec::<f32>().ok().as_deref() != Some(&quant_type.table()) {
        return Err(bad(format!(
            "its quant_map is not bitsandbytes' {} table",
            quant_type.name()
        )));
    }
    let packed = source.read_exact(key, Some(&[len.div_ceil(2), 1]), DType::U8)?;
    let absmax = match (state.nested_blocksize, state.nested_offset) {
        (None, None) => Absmax::Plain(f32s(source, &format!("{key}.absmax"), blocks)?),
        (Some(NESTED_BLOCKSIZE), Some(offset)) => {
            let map = source.read_exact(&format!("{key}.nested_quant_map"), Some(&[256]), DType::F32)?;
            if map.into_vec::<f32>().ok().as_deref() != Some(&dynamic_map(true)) {
                return Err(bad("its nested_quant_map is not bitsandbytes' dynamic map".into()));
            }
            let codes = source.read_exact(&format!("{key}.absmax"), Some(&[blocks]), DType::U8)?;
            Absmax::Nested(NestedAbsmax {
                codes: codes.into_vec::<u8>().map_err(|e| bad(format!("{e:?}")))?,
                absmax: f32s(
                    source,
                    &format!("{key}.nested_absmax"),
                    blocks.div_ceil(NESTED_BLOCKSIZE),
                )?,
                offset: offset as f32,
            })
        }
        (blocksize, _) => {
            return Err(bad(format!(
                "double quantization with nested block size {blocksize:?} (bitsandbytes uses {NESTED_BLOCKSIZE})"
            )));
        }
    };
    let weight = FourBit {
        quant_type,
        blocksize: state.blocksize,
        len,
        packed: packed.into_vec::<u8>().map_err(|e| bad(format!("{e:?}")))?,
        absmax,
    };
    Ok(Some((weight, dtype)))
}

fn f32s(source: &mut dyn TensorSource, key: &str, len: usize) -> Result<Vec<f32>> {
    let data = source.read_exact(key, Some(&[len]), DType::F32)?;
    Ok(data.into_vec::<f32>().expect("read_exact returned f32 data"))
}
