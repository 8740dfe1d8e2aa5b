use ember_model::Rope;

/// RoPE in transformers' `rotate_half` layout for one layer type, with the angles formed in f32
/// as `ember_model::RopeTables` forms them: `position · frequency`, the same for both halves.
pub(crate) struct Rotary {
    inv_freq: Vec<f32>,
}

impl Rotary {
    pub fn new(rope: Rope, head_dim: usize) -> Self {
        Self {
            inv_freq: rope.inverse_frequencies(head_dim),
        }
    }

    /// Rotates each head of `x` (one token's heads, `head_dim` values each) to `position`.
    pub fn apply(&self, x: &mut [f32], position: usize) {
        let half = self.inv_freq.len();
        let (cos, sin): (Vec<f32>, Vec<f32>) = self
            .inv_freq
            .iter()
            .map(|f| {
                let angle = position as f32 * f;
                (angle.cos(), angle.sin())
            })
            .unzip();
        for head in x.chunks_exact_mut(2 * half) {
            let (x1, x2) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                x1[i] = a * cos[i] + -b * sin[i];
                x2[i] = b * cos[i] + a * sin[i];
            }
        }
    }
}
