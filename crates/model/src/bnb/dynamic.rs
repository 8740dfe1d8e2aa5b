//! bitsandbytes' dynamic 8-bit map and its blockwise 8-bit quantization on the host, as
//! `quantize_blockwise` computes it (`kQuantizeBlockwise` with `General8bit` in
//! `csrc/kernels.cu`): what double quantization applies to a 4-bit weight's absmax.

/// bnb's `create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)`, bit for bit.
///
/// For each decimal exponent 10^-6 … 10^0 the map holds the midpoints of an evenly spaced
/// `linspace(0.1, 1)` (twice as many when unsigned, mirrored to negative values when signed),
/// plus 0 and 1, sorted.
pub fn dynamic_map(signed: bool) -> [f32; 256] {
    // The Python ints/floats `10 ** (-6 + i)`, multiplied into the f32 midpoints as f32.
    const SCALES: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
    let mut values = Vec::with_capacity(256);
    for (i, scale) in SCALES.iter().enumerate() {
        let intervals = if signed { 1 << i } else { 2 << i };
        let bounds = torch_linspace(0.1, 1.0, intervals + 1);
        let scale = *scale as f32;
        for pair in bounds.windows(2) {
            let mean = (pair[0] + pair[1]) / 2.0;
            values.push(scale * mean);
            if signed {
                values.push(-scale * mean);
            }
        }
    }
    values.extend([0.0, 1.0]);
    values.sort_by(f32::total_cmp);
    values.try_into().expect("the dynamic map has 256 values")
}

/// `torch.linspace(start, end, steps, dtype=float32)` as PyTorch's CPU kernel computes it: the
/// first half counts up from `start`, the second half down from `end`, each value one fused
/// multiply-add (what the built kernel does; plain multiply-then-add differs in the last bit).
fn torch_linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    (0..steps)
        .map(|i| {
            if i < steps / 2 {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - 1 - i) as f32, end)
            }
        })
        .collect()
}

/// `quantize_blockwise(values, code, blocksize)`: per block the absolute maximum, and each
/// value times its reciprocal coded by the kernel's search (`dQuantize`), ties and all.
/// A block of zeros has absmax 0; its values become NaN (0 · inf) and code 0, as on the GPU.
pub fn quantize_blockwise(values: &[f32], code: &[f32; 256], blocksize: usize) -> (Vec<u8>, Vec<f32>) {
    let mut codes = Vec::with_capacity(values.len());
    let mut absmax = Vec::with_capacity(values.len().div_ceil(blocksize));
    for block in values.chunks(blocksize) {
        let max = block.iter().fold(-f32::MAX, |m, v| m.max(v.abs()));
        let inv = 1.0 / max;
        codes.extend(block.iter().map(|&v| nearest(code, v * inv)));
        absmax.push(max);
    }
    (codes, absmax)
}

/// `dequantize_blockwise`: `code[c] · absmax` of each value's block.
pub fn dequantize_blockwise(codes: &[u8], absmax: &[f32], code: &[f32; 256], blocksize: usize) -> Vec<f32> {
    codes
        .chunks(blocksize)
        .zip(absmax)
        .flat_map(|(block, &max)| block.iter().map(move |&c| code[c as usize] * max))
        .collect()
}

/// The code of `x` (a value over its block's absmax) in the sorted `code` map: the kernel's
/// `dQuantize<0>`, a binary search from index 127 down seven halvings, then the
/// nearer of the leaf and its neighbour by their midpoint `(a + b) · 0.5`; a value on the
/// midpoint keeps the leaf, NaN ends at code 0.
pub fn nearest(code: &[f32; 256], x: f32) -> u8 {
    let (mut pivot, mut upper_pivot, mut lower_pivot) = (127usize, 255usize, 0usize);
    let (mut lower, mut upper) = (-1.0f32, 1.0f32);
    let mut val = code[pivot];
    for i in [64, 32, 16, 8, 4, 2, 1] {
        if x > val {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = code[pivot];
    }
    if upper_pivot == 255 {
        upper = code[upper_pivot];
    }
    if lower_pivot == 0 {
        lower = code[lower_pivot];
    }
    let chosen = if x > val {
        if x > (upper + val) * 0.5 { upper_pivot } else { pivot }
    } else if x < (lower + val) * 0.5 {
        lower_pivot
    } else {
        pivot
    };
    chosen as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fixture_map(key: &str) -> Vec<f32> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/optim/adamw8bit.safetensors");
        let bytes = std::fs::read(path).unwrap();
        let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let view = tensors.tensor(key).unwrap();
        view.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn dynamic_maps_are_bitsandbytes_maps_bit_for_bit() {
        for (signed, key) in [(true, "qmap1"), (false, "qmap2")] {
            let ours = dynamic_map(signed).map(f32::to_bits);
            let bnb: Vec<u32> = fixture_map(key).into_iter().map(f32::to_bits).collect();
            assert_eq!(ours.as_slice(), bnb.as_slice(), "{key}");
        }
    }

    #[test]
    fn dynamic_maps_have_bitsandbytes_landmarks() {
        // bitsandbytes 0.50.2's create_dynamic_map(True)[[0, 126, 127, 128, 254, 255]].
        let signed = dynamic_map(true);
        assert_eq!(signed[0], -0.992_968_75);
        assert_eq!(signed[126], -5.500_000_4e-7);
        assert_eq!(signed[127].to_bits(), 0);
        assert_eq!(signed[128], 5.500_000_4e-7);
        assert_eq!(signed[254], 0.992_968_75);
        assert_eq!(signed[255], 1.0);
        // create_dynamic_map(False)[[0, 1, 127, 254, 255]].
        let unsigned = dynamic_map(false);
        assert_eq!(unsigned[0].to_bits(), 0);
        assert_eq!(unsigned[1], 3.250_000_3e-7);
        assert_eq!(unsigned[127], 0.103_515_625);
        assert_eq!(unsigned[254], 0.996_484_4);
        assert_eq!(unsigned[255], 1.0);
    }

    #[test]
    fn nearest_picks_the_closer_neighbour_and_keeps_the_leaf_on_a_midpoint() {
        let code = dynamic_map(true);
        for (i, pair) in code.windows(2).enumerate() {
            let mid = (pair[0] + pair[1]) * 0.5;
            assert_eq!(nearest(&code, pair[0]) as usize, i, "{}", pair[0]);
            assert_eq!(nearest(&code, pair[1]) as usize, i + 1, "{}", pair[1]);
            let (below, above) = (f32::from_bits(mid.to_bits() - 1), f32::from_bits(mid.to_bits() + 1));
            let (below, above) = if mid < 0.0 { (above, below) } else { (below, above) };
            assert_eq!(nearest(&code, below) as usize, i, "below the midpoint {mid}");
            assert_eq!(nearest(&code, above) as usize, i + 1, "above the midpoint {mid}");
        }
        assert_eq!(nearest(&code, f32::NAN), 0);
        assert_eq!(nearest(&code, 2.0), 255);
        assert_eq!(nearest(&code, -2.0), 0);
    }
}
