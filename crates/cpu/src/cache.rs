/// One layer's keys and values for up to `capacity` positions, written in place:
/// `[kv_heads, capacity, head_dim]` each, so that a head's positions are contiguous.
pub(crate) struct LayerCache {
    keys: Vec<f32>,
    values: Vec<f32>,
    capacity: usize,
    head_dim: usize,
}

impl LayerCache {
    pub fn new(kv_heads: usize, capacity: usize, head_dim: usize) -> Self {
        // Zeroed pages are mapped lazily: a large capacity costs memory only as it fills.
        Self {
            keys: vec![0.0; kv_heads * capacity * head_dim],
            values: vec![0.0; kv_heads * capacity * head_dim],
            capacity,
            head_dim,
        }
    }

    /// Stores one token's keys and values (`[kv_heads, head_dim]` each) at `position`.
    pub fn write(&mut self, position: usize, k: &[f32], v: &[f32]) {
        let d = self.head_dim;
        for (head, (k, v)) in k.chunks_exact(d).zip(v.chunks_exact(d)).enumerate() {
            let at = (head * self.capacity + position) * d;
            self.keys[at..at + d].copy_from_slice(k);
            self.values[at..at + d].copy_from_slice(v);
        }
    }

    /// Key head `head` at `position`.
    pub fn key(&self, head: usize, position: usize) -> &[f32] {
        let at = (head * self.capacity + position) * self.head_dim;
        &self.keys[at..at + self.head_dim]
    }

    /// Value head `head` at `position`.
    pub fn value(&self, head: usize, position: usize) -> &[f32] {
        let at = (head * self.capacity + position) * self.head_dim;
        &self.values[at..at + self.head_dim]
    }
}
