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

/// `Σ a·b` over sixteen running sums: independent lanes the compiler turns into vector
/// multiply-adds (one running sum would be a chain of dependent additions it may not reorder).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
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
    // Pairwise, for the same reason.
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            sums[i] += sums[i + width];
        }
        width /= 2;
    }
    sums[0] + rest
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
