//! ggml's k-quants, quantized as `ggml-quants.c`'s reference functions do
//! (`quantize_row_q4_K_ref`, `quantize_row_q6_K_ref`): what `llama-quantize` writes without an
//! importance matrix. Every f32 operation is ggml's, in ggml's order (no fused multiply-adds,
//! which ggml's portable build does not use either), so the bytes are equal, not just close.

use half::f16;

/// Values per k-quant super-block (`QK_K`).
const QK_K: usize = 256;
/// Below this a group counts as all zero (`GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;

/// `nearest_int`: round to nearest, ties to even, by adding 1.5·2²³ so the integer lands in the
/// mantissa (valid for |x| ≤ 2²²; ggml asserts it).
fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

fn f16_bytes(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// `make_qkx2_quants`: a scale and a min for `x` as unsigned levels `0..=nmax`, searched over
/// `nstep + 1` candidate scales for the least weighted squared error; levels into `l`. Returns
/// `(scale, -min)`.
#[allow(clippy::too_many_arguments)] // ggml's signature, kept so the two read side by side
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min));
        l[i] = q.clamp(0, nmax) as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let (w, q) = (weights[i], q as f32);
            sum_l += w * q;
            sum_l2 += w * q * q;
            sum_xl += w * q * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `make_qx_quants` with `rmse_type = 1` and no importance weights: a signed scale for `x` as
/// levels `-nmax..nmax` (stored offset by `nmax` in `l`), the best of 19 candidate scales by
/// squared error weighted by x².
fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    // Σ w·x·l and Σ w·l² with w = x², each product in ggml's order.
    let sums = |iscale: f32| {
        x.iter().fold((0f32, 0f32), |(sumlx, suml2), &v| {
            let (w, q) = (v * v, level(iscale, v) as f32);
            (sumlx + w * v * q, suml2 + w * q * q)
        })
    };
    let mut iscale = -(nmax as f32) / max;
    for (q, &v) in l.iter_mut().zip(x) {
        *q = (level(iscale, v) + nmax) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (q, &v) in l.iter_mut().zip(x) {
                *q = (level(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `quantize_row_q4_K_ref` for one super-block of 256 values into 144 bytes: `d: f16`,
/// `dmin: f16`, 8 sub-block scales and mins as packed 6-bit values, then 4-bit levels.
pub(super) fn q4_k(x: &[f32], b: &mut [u8]) {
    let mut levels = [0u8; QK_K];
    let mut laux = [0u8; 32];
    let mut weights = [0f32; 32];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..QK_K / 32 {
        let x = &x[32 * j..32 * j + 32];
        let sum_x2 = x.iter().fold(0f32, |s, &v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(x) {
            *w = av_x + v.abs();
        }
        let l = &mut levels[32 * j..32 * j + 32];
        (scales[j], mins[j]) = make_qkx2_quants(15, x, &weights, l, &mut laux, -1.0, 0.1, 20);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let packed = &mut [0u8; 12];
    for j in 0..QK_K / 32 {
        // ggml stores nearest_int's result in a u8 (wrapping) before clamping to 63.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    b[0..2].copy_from_slice(&f16_bytes(max_scale / 63.0));
    b[2..4].copy_from_slice(&f16_bytes(max_min / 63.0));
    b[4..16].copy_from_slice(packed);
    let (d_all, dmin_all) = (f16_at(b, 0), f16_at(b, 2));
    for j in 0..QK_K / 32 {
        let (sc, m) = super::dequant::scale_min_k4(j, packed);
        let d = d_all * sc;
        // A zero scale keeps make_qkx2_quants' levels, as ggml does.
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * m;
        for i in 32 * j..32 * j + 32 {
            levels[i] = nearest_int((x[i] + dm) / d).clamp(0, 15) as u8;
        }
    }
    for (chunk, q) in levels.chunks_exact(64).zip(b[16..144].chunks_exact_mut(32)) {
        for (i, q) in q.iter_mut().enumerate() {
            *q = chunk[i] | (chunk[i + 32] << 4);
        }
    }
}

/// `quantize_row_q6_K_ref` for one super-block of 256 values into 210 bytes: 4 low bits of
/// each level (`ql`), 2 high bits (`qh`), 16 signed 8-bit sub-block scales, `d: f16` last.
pub(super) fn q6_k(x: &[f32], b: &mut [u8]) {
    let mut levels = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for (ib, scale) in scales.iter_mut().enumerate() {
        *scale = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut levels[16 * ib..16 * ib + 16]);
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = *scale;
        }
    }
    b.fill(0);
    if max_abs_scale < GROUP_MAX_EPS {
        return;
    }
    let iscale = -128.0 / max_scale;
    b[208..210].copy_from_slice(&f16_bytes(1.0 / iscale));
    let d_all = f16_at(b, 208);
    for (ib, &scale) in scales.iter().enumerate() {
        let s = nearest_int(iscale * scale).min(127) as i8;
        b[192 + ib] = s as u8;
        let d = d_all * s as f32;
        // A zero scale keeps make_qx_quants' levels, as ggml does.
        if d == 0.0 {
            continue;
        }
        for i in 16 * ib..16 * ib + 16 {
            levels[i] = (nearest_int(x[i] / d).clamp(-32, 31) + 32) as i8;
        }
    }
    let levels = levels.map(|l| l as u8);
    for (half, l) in levels.chunks_exact(128).enumerate() {
        let (ql, qh) = (64 * half, 128 + 32 * half);
        for i in 0..32 {
            b[ql + i] = (l[i] & 0xF) | ((l[i + 64] & 0xF) << 4);
            b[ql + i + 32] = (l[i + 32] & 0xF) | ((l[i + 96] & 0xF) << 4);
            b[qh + i] = (l[i] >> 4) | ((l[i + 32] >> 4) << 2) | ((l[i + 64] >> 4) << 4) | ((l[i + 96] >> 4) << 6);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_ties_to_even() {
        assert_eq!(
            [0.5, 1.5, 2.5, -0.5, -1.5, 2.4999, 7.0].map(nearest_int),
            [0, 2, 2, 0, -2, 2, 7]
        );
    }
}
