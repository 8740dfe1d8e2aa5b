//! `x · Wᵀ` for a weight `W` `[rows, cols]` as transformers stores it (`[out, in]`, row-major),
//! read in place: each thread of rayon's pool takes a band of `W`'s rows, so every weight is
//! streamed from memory once per step, whatever the step's token count. Decoding one token is
//! bound by that stream: the Gemma 3 270M reads its 1.07 GB of f32 weights per token.

use rayon::prelude::*;

/// `out` `[n, rows]` = `x` `[n, cols]` · `wᵀ`, for `w` `[rows, cols]`.
pub(crate) fn project(w: &[f32], cols: usize, x: &[f32], out: &mut [f32]) {
    let rows = w.len() / cols;
    let n = x.len() / cols;
    debug_assert_eq!(out.len(), n * rows);
    let band = rows_per_task(rows);
    let dot = best_dot();
    if n == 1 {
        out.par_chunks_mut(band)
            .zip(w.par_chunks(band * cols))
            .for_each(|(out, w)| {
                for (o, row) in out.iter_mut().zip(w.chunks_exact(cols)) {
                    *o = dot(row, x);
                }
            });
        return;
    }
    // Several tokens (a prompt): each weight row, read once, meets every token while it is in
    // cache; the products land as `[rows, n]` and are transposed after.
    let mut transposed = vec![0f32; rows * n];
    transposed
        .par_chunks_mut(band * n)
        .zip(w.par_chunks(band * cols))
        .for_each(|(out, w)| {
            for (out, row) in out.chunks_exact_mut(n).zip(w.chunks_exact(cols)) {
                for (o, x) in out.iter_mut().zip(x.chunks_exact(cols)) {
                    *o = dot(row, x);
                }
            }
        });
    for (r, products) in transposed.chunks_exact(n).enumerate() {
        for (t, &p) in products.iter().enumerate() {
            out[t * rows + r] = p;
        }
    }
}

/// Rows a task takes: a few tasks per thread, so a thread slowed by other work is made up for
/// by the others, and none so small that scheduling costs more than the rows.
fn rows_per_task(rows: usize) -> usize {
    (rows / (rayon::current_num_threads() * 4)).clamp(16, 4096)
}

/// A dot product: [`dot`]'s choice for this CPU.
type Dot = fn(&[f32], &[f32]) -> f32;

/// `Σ a·b`, with AVX2 and FMA where the CPU has them. Without them the compiler vectorizes
/// [`dot_portable`] for x86-64's baseline, and does it poorly: two lanes of SSE a multiply,
/// which made decoding compute-bound at half the memory's speed.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    best_dot()(a, b)
}

fn best_dot() -> Dot {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA, checked above.
        return |a, b| unsafe { dot_avx2(a, b) };
    }
    dot_portable
}

/// `Σ a·b` over sixteen running sums: independent lanes the compiler may turn into vector
/// multiply-adds (one running sum would be a chain of dependent additions it may not reorder).
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    debug_assert_eq!(a.len(), b.len());
    let mut sums = [0f32; LANES];
    let (a_blocks, a_rest) = a.as_chunks::<LANES>();
    let (b_blocks, b_rest) = b.as_chunks::<LANES>();
    for (a, b) in a_blocks.iter().zip(b_blocks) {
        for i in 0..LANES {
            sums[i] += a[i] * b[i];
        }
    }
    let rest: f32 = a_rest.iter().zip(b_rest).map(|(a, b)| a * b).sum();
    sum_pairwise(sums) + rest
}

/// `Σ a·b` in four running sums of eight lanes, 32 values a step.
///
/// # Safety
///
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::{
        __m256, _mm256_add_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    };
    let n = a.len().min(b.len());
    let (a_ptr, b_ptr) = (a.as_ptr(), b.as_ptr());
    // SAFETY (every load): `i + 8 <= n`, within both slices.
    let step = |i: usize, sum: __m256| unsafe {
        _mm256_fmadd_ps(_mm256_loadu_ps(a_ptr.add(i)), _mm256_loadu_ps(b_ptr.add(i)), sum)
    };
    let mut sums = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, sum) in sums.iter_mut().enumerate() {
            *sum = step(i + 8 * k, *sum);
        }
        i += 32;
    }
    while i + 8 <= n {
        sums[0] = step(i, sums[0]);
        i += 8;
    }
    let total = _mm256_add_ps(_mm256_add_ps(sums[0], sums[1]), _mm256_add_ps(sums[2], sums[3]));
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds eight values.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), total) };
    let rest: f32 = a[i..n].iter().zip(&b[i..n]).map(|(a, b)| a * b).sum();
    sum_pairwise(lanes) + rest
}

/// The sum of `values`, halving its width each step (an even power of two wide).
fn sum_pairwise<const N: usize>(mut values: [f32; N]) -> f32 {
    let mut width = N / 2;
    while width > 0 {
        for i in 0..width {
            values[i] += values[i + width];
        }
        width /= 2;
    }
    values[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn every_dot_product_matches_a_plain_sum() {
        for len in [0, 1, 7, 8, 31, 32, 33, 64, 100, 640] {
            let (a, b) = (values(len, 3), values(len, 4));
            let expected: f64 = a.iter().zip(&b).map(|(a, b)| *a as f64 * *b as f64).sum();
            for (name, got) in [("portable", dot_portable(&a, &b)), ("best", dot(&a, &b))] {
                assert!(
                    (got as f64 - expected).abs() < 1e-4,
                    "{name}, {len} values: {got} vs {expected}"
                );
            }
        }
    }

    #[test]
    fn products_match_a_plain_loop_for_one_token_and_several() {
        let (rows, cols) = (300, 37);
        let w = values(rows * cols, 1);
        for n in [1, 3] {
            let x = values(n * cols, 2);
            let mut out = vec![0f32; n * rows];
            project(&w, cols, &x, &mut out);
            for t in 0..n {
                for r in 0..rows {
                    let expected: f64 = (0..cols).map(|c| w[r * cols + c] as f64 * x[t * cols + c] as f64).sum();
                    let got = out[t * rows + r] as f64;
                    assert!((got - expected).abs() < 1e-5, "token {t}, row {r}: {got} vs {expected}");
                }
            }
        }
    }
}
