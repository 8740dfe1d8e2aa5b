//! ggml's quantization, the inverse of [`super::dequant`]: f32 values to the bytes of a tensor
//! type, as `ggml-quants.c`'s reference functions (`quantize_row_*_ref`) and `ggml.c`'s
//! conversions compute them, so a file Ember writes holds what `llama-quantize` or
//! `convert_hf_to_gguf.py` would write for the same values.

use half::f16;

use super::types::GgmlType;

/// Below this many blocks a thread of its own costs more than it saves.
const MIN_BLOCKS_PER_THREAD: usize = 1 << 10;

/// The bytes of `values` (a whole number of `ty` blocks) stored as `ty`; `None` for a type
/// Ember does not write.
pub(crate) fn quantize(ty: GgmlType, values: &[f32]) -> Option<Vec<u8>> {
    let (elements, block_bytes) = ty.block();
    let block: fn(&[f32], &mut [u8]) = match ty {
        GgmlType::F32 => |x, b| b.copy_from_slice(&x[0].to_le_bytes()),
        GgmlType::F16 => |x, b| b.copy_from_slice(&f16::from_f32(x[0]).to_le_bytes()),
        GgmlType::BF16 => |x, b| b.copy_from_slice(&bf16_bits(x[0]).to_le_bytes()),
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q4_K => super::quantize_k::q4_k,
        GgmlType::Q6_K => super::quantize_k::q6_k,
        _ => return None,
    };
    let mut out = vec![0u8; values.len() / elements * block_bytes];
    // Blocks are quantized independently: a large tensor is split across the cores (a k-quant
    // block searches 20 scales), the bytes the same however it is split.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = (values.len() / elements).div_ceil(threads).max(MIN_BLOCKS_PER_THREAD);
    std::thread::scope(|scope| {
        for (x, b) in values
            .chunks(per_thread * elements)
            .zip(out.chunks_mut(per_thread * block_bytes))
        {
            scope.spawn(move || {
                for (x, b) in x.chunks_exact(elements).zip(b.chunks_exact_mut(block_bytes)) {
                    block(x, b);
                }
            });
        }
    });
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

/// `quantize_row_q5_0_ref`: `d = max / -16` with `max` the value of largest magnitude (its
/// sign kept), stored as f16; each value `x / d + 16.5` truncated to 0..=31, the low nibbles
/// as Q4_0 packs them and the fifth bits in `qh`.
fn q5_0(x: &[f32], b: &mut [u8]) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    b[0..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    let mut qh = 0u32;
    for j in 0..16 {
        // ggml converts to int8 (truncating) before taking the minimum.
        let level = |v: f32| ((v * id + 16.5) as i8 as u8).min(31);
        let (x0, x1) = (level(x[j]), level(x[j + 16]));
        b[6 + j] = (x0 & 0x0F) | ((x1 & 0x0F) << 4);
        qh |= u32::from((x0 & 0x10) >> 4) << j;
        qh |= u32::from((x1 & 0x10) >> 4) << (j + 16);
    }
    b[2..6].copy_from_slice(&qh.to_le_bytes());
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
        assert_eq!(quantize(GgmlType::Q4_1, &[0.0; 32]), None);
    }

    /// Rows of `fixtures/gguf/kquants-expected.safetensors` (made by ggml's own
    /// `quantize_row_*_ref`, `fixtures/make_kquant_fixtures.py`) quantize to ggml's bytes.
    #[test]
    fn k_quants_q5_0_and_q8_0_give_ggmls_bytes() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/gguf/kquants-expected.safetensors"
        );
        let bytes = std::fs::read(path).unwrap();
        let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let input = tensors.tensor("input").unwrap();
        let cols = input.shape()[1];
        let values: Vec<f32> = input
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        for (name, ty) in [
            ("q4_k", GgmlType::Q4_K),
            ("q6_k", GgmlType::Q6_K),
            ("q5_0", GgmlType::Q5_0),
            ("q8_0", GgmlType::Q8_0),
        ] {
            let expected = tensors.tensor(name).unwrap();
            let row_bytes = expected.shape()[1];
            for (row, (x, want)) in values
                .chunks_exact(cols)
                .zip(expected.data().chunks_exact(row_bytes))
                .enumerate()
            {
                let ours = quantize(ty, x).unwrap();
                assert!(
                    ours == want,
                    "{name} row {row}: {:?}\n vs ggml {:?}",
                    &ours[..24],
                    &want[..24]
                );
            }
        }
    }
}
