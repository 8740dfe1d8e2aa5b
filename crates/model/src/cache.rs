use burn::tensor::{Tensor, backend::Backend};

/// Keys and values of every layer for the positions processed so far.
///
/// The prompt is run once; each generated token then appends one position. Storage has a
/// fixed capacity, allocated on first use, so every decoding step has the same tensor shapes:
/// GPU backends compile and tune their kernels once instead of at every new length. Slots
/// past the current length are hidden by the causal mask.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    /// Per layer: `[batch, kv_heads, capacity, head_dim]` keys and values.
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    capacity: usize,
    len: usize,
}

impl<B: Backend> KvCache<B> {
    /// A cache for up to `capacity` positions.
    pub fn new(num_layers: usize, capacity: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            capacity,
            len: 0,
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache can hold: the key length attention sees.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Writes this step's keys and values of layer `layer` at the current length and returns
    /// the whole storage. The length advances when the step is over ([`KvCache::advance`]).
    pub(crate) fn append(&mut self, layer: usize, k: Tensor<B, 4>, v: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [batch, heads, steps, head_dim] = k.dims();
        let (start, end) = (self.len, self.len + steps);
        assert!(
            end <= self.capacity,
            "KV cache overflow: {end} positions > capacity {}",
            self.capacity
        );
        let (keys, values) = match self.layers[layer].take() {
            Some(kv) => kv,
            None => {
                let zeros = Tensor::zeros([batch, heads, self.capacity, head_dim], (&k.device(), k.dtype()));
                (zeros.clone(), zeros)
            }
        };
        let keys = keys.slice_assign([0..batch, 0..heads, start..end, 0..head_dim], k);
        let values = values.slice_assign([0..batch, 0..heads, start..end, 0..head_dim], v);
        self.layers[layer] = Some((keys.clone(), values.clone()));
        (keys, values)
    }

    /// Ends a step of `steps` positions, once every layer has written its keys and values (the
    /// layers that share another's write none).
    pub(crate) fn advance(&mut self, steps: usize) {
        assert!(self.len + steps <= self.capacity, "KV cache overflow");
        self.len += steps;
    }
}
