use burn::tensor::{Bool, Int, Tensor, backend::Backend};

/// Which keys each query may attend to, for one forward call.
///
/// Attention is causal over sequence indices; with `segments` (`[batch, seq]`, 0 = padding,
/// 1..n = the sample a token belongs to) a query sees only keys of its own sample, which is
/// how right-padded and packed batches are consumed. Sliding-window layers also drop keys
/// `window` or more steps back.
#[derive(Debug, Clone)]
pub struct AttentionMask<B: Backend> {
    batch: usize,
    /// Absolute index of the first query (the KV-cache length before this call).
    q_offset: usize,
    q_len: usize,
    /// Keys attended over: `q_len` without a cache, the cache's capacity with one.
    kv_len: usize,
    segments: Option<Tensor<B, 2, Int>>,
    device: B::Device,
}

impl<B: Backend> AttentionMask<B> {
    /// A plain causal mask for `q_len` queries following `q_offset` cached positions, over
    /// `kv_len` keys (slots past the queries are masked as future positions).
    pub fn causal(batch: usize, q_offset: usize, q_len: usize, kv_len: usize, device: &B::Device) -> Self {
        Self {
            batch,
            q_offset,
            q_len,
            kv_len,
            segments: None,
            device: device.clone(),
        }
    }

    /// A causal mask restricted to same-segment keys (padding and packing); no cache.
    pub fn with_segments(segments: Tensor<B, 2, Int>) -> Self {
        let [batch, q_len] = segments.dims();
        let device = segments.device();
        Self {
            batch,
            q_offset: 0,
            q_len,
            kv_len: q_len,
            segments: Some(segments),
            device,
        }
    }

    /// `[batch, 1, q_len, kv_len]`, `true` where attention is forbidden.
    pub fn build(&self, window: Option<usize>) -> Tensor<B, 4, Bool> {
        let (t, s) = (self.q_len, self.kv_len);
        let q = Tensor::<B, 1, Int>::arange(self.q_offset as i64..(self.q_offset + t) as i64, &self.device)
            .reshape([t, 1])
            .expand([t, s]);
        let k = Tensor::<B, 1, Int>::arange(0..s as i64, &self.device)
            .reshape([1, s])
            .expand([t, s]);
        let mut masked = k.clone().greater(q.clone());
        if let Some(window) = window {
            // Keep keys with q - k < window.
            masked = masked.bool_or((k + window as i64).lower_equal(q));
        }
        let mut masked = masked.reshape([1, 1, t, s]).expand([self.batch, 1, t, s]);
        if let Some(segments) = &self.segments {
            let seg_q = segments
                .clone()
                .reshape([self.batch, 1, t, 1])
                .expand([self.batch, 1, t, s]);
            let seg_k = segments
                .clone()
                .reshape([self.batch, 1, 1, s])
                .expand([self.batch, 1, t, s]);
            let other_sample = seg_q.not_equal(seg_k.clone());
            masked = masked.bool_or(other_sample).bool_or(seg_k.equal_elem(0));
        }
        masked
    }
}
