//! ggml's quantization, the inverse of [`super::dequant`]: f32 values to the bytes of a tensor
//! type, as `ggml-quants.c`'s reference functions (`quantize_row_*_ref`) and `ggml.c`'s
//! conversions compute them, so a file Ember writes holds what `llama-quantize` or
//! `convert_hf_to_gguf.py` would write for the same values.

use half::f16;

use super::types::GgmlType;

/// The bytes of `values` (a whole number of `ty` blocks) stored as `ty`; `None` for a type
/// Ember does not write.
pub(crate) fn quantize(ty: GgmlType, values: &[f32]) -> Option<Vec<u8>> {
    let (elements, block_bytes) = ty.block();
    let block: fn(&[f32], &mut [u8]) = match ty {
        GgmlType::F32 => |x, b| b.copy_from_slice(&x[0].to_le_bytes()),
        GgmlType::F16 => |x, b| b.copy_from_slice(&f16::from_f32(x[0]).to_le_bytes()),
        GgmlType::BF16 => |x, b| b.copy_from_slice(&bf16_bits(x[0]).to_le_bytes()),
        GgmlType::Q8_0 => q8_0,
        _ => return None,
    };
    let mut out = vec![0u8; values.len() / elements * block_bytes];
    for (x, b) in values.chunks_exact(elements).zip(out.chunks_exact_mut(block_bytes)) {
        block(x, b);
    }
    Some(out)
}

/// `ggml_compute_fp32_to_bf16`: round to nearest even; NaN stays a (quiet) NaN.
fn bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

/// `quantize_row_q8_0_ref`: `d = max|x| / 127` stored as f16, each value `round(x / d)` with
/// the f32 reciprocal of the unrounded `d`, halves away from zero.
fn q8_0(x: &[f32], b: &mut [u8]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    b[0..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    for (q, &v) in b[2..34].iter_mut().zip(x) {
        *q = (v * id).round() as i8 as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::super::dequant::dequantize;
    use super::*;

    #[test]
    fn float_types_round_trip_and_round_to_nearest_even() {
        let values = [0.0, -1.5, 3.140625, 65280.0, 1e-8, f32::INFINITY];
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
            let back = dequantize(ty, &quantize(ty, &values).unwrap());
            assert_eq!(back[..4], values[..4], "{ty:?}");
        }
        // 1 + 2^-8 lies halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert!(f32::from_bits(u32::from(bf16_bits(f32::NAN)) << 16).is_nan());
    }

    #[test]
    fn q8_0_scales_by_the_block_maximum_and_rounds_halves_away_from_zero() {
        let mut x = [0f32; 32];
        x[0] = 127.0;
        x[1] = -2.5;
        x[2] = 2.5;
        x[3] = -127.0;
        let bytes = quantize(GgmlType::Q8_0, &x).unwrap();
        assert_eq!(f16::from_le_bytes([bytes[0], bytes[1]]).to_f32(), 1.0);
        assert_eq!(
            bytes[2..6].iter().map(|&b| b as i8).collect::<Vec<_>>(),
            [127, -3, 3, -127]
        );
        // An all-zero block has scale 0 and zero codes, not NaN.
        assert!(quantize(GgmlType::Q8_0, &[0.0; 32]).unwrap().iter().all(|&b| b == 0));
        assert_eq!(quantize(GgmlType::Q4_K, &[0.0; 256]), None);
    }
}
