use rayon::prelude::*;

use crate::cache::LayerCache;
use crate::matvec::dot;

/// A layer's attention over its cache, as `ember_model::attend` computes it in f32: scores
/// scaled, soft-capped (Gemma 2), restricted to the causal (and sliding) window and
/// soft-maxed, then the values' weighted sum. Query head `h` reads key/value head
/// `h / (heads / kv_heads)` (GQA, MQA).
pub(crate) struct CacheAttention {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub scaling: f32,
    pub softcap: Option<f32>,
    /// Sliding layers see the keys less than `window` positions back.
    pub window: Option<usize>,
}

impl CacheAttention {
    /// `out` `[n, heads · head_dim]` for the queries `q` (same shape) of the tokens `at`
    /// (each its sequence and position), whose keys and values their sequences' `caches`
    /// already hold.
    pub fn attend(&self, q: &[f32], at: &[(usize, usize)], caches: &[LayerCache], out: &mut [f32]) {
        let d = self.head_dim;
        let group = self.heads / self.kv_heads;
        out.par_chunks_mut(d)
            .zip(q.par_chunks(d))
            .enumerate()
            .for_each(|(i, (out, q))| {
                let (token, head) = (i / self.heads, i % self.heads);
                let kv_head = head / group;
                let (sequence, position) = at[token];
                let cache = &caches[sequence];
                let first = self.window.map_or(0, |w| (position + 1).saturating_sub(w));
                let mut scores: Vec<f32> = (first..=position)
                    .map(|p| {
                        let s = dot(q, cache.key(kv_head, p)) * self.scaling;
                        match self.softcap {
                            Some(cap) => (s / cap).tanh() * cap,
                            None => s,
                        }
                    })
                    .collect();
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for s in &mut scores {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                out.fill(0.0);
                for (p, s) in (first..=position).zip(&scores) {
                    let weight = s / sum;
                    for (o, v) in out.iter_mut().zip(cache.value(kv_head, p)) {
                        *o += weight * v;
                    }
                }
            });
    }
}
