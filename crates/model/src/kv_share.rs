//! Keys and values handed from one layer to later ones (Gemma 3n and 4): the last
//! `num_kv_shared_layers` layers compute none and attend over those of the last earlier layer of
//! their type, for the whole forward call (with a KV cache, its full storage).

use burn::tensor::{Tensor, backend::Backend};

/// The keys and values that sharing layers use, by the index of the layer that computed them,
/// for one forward call; and, in a training step's backward, their gradients.
#[derive(Debug, Clone)]
pub struct SharedKv<B: Backend> {
    /// Per layer: `[batch, kv_heads, kv_len, head_dim]` keys and values, after the norms and
    /// RoPE, as attention uses them.
    kv: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    /// Per layer: the gradients the sharing layers' backward passes left for its keys and values.
    grads: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
}

impl<B: Backend> SharedKv<B> {
    pub fn new(num_layers: usize) -> Self {
        Self {
            kv: vec![None; num_layers],
            grads: vec![None; num_layers],
        }
    }

    /// Keeps layer `layer`'s keys and values for the layers that share them.
    pub(crate) fn store(&mut self, layer: usize, k: Tensor<B, 4>, v: Tensor<B, 4>) {
        self.kv[layer] = Some((k, v));
    }

    /// The keys and values of layer `source`.
    ///
    /// # Panics
    /// When `source` has not run in this forward call: the layers run in order, and a config
    /// whose sharing layers have no source is refused when it is read.
    pub(crate) fn get(&self, source: usize) -> (Tensor<B, 4>, Tensor<B, 4>) {
        self.kv[source]
            .clone()
            .unwrap_or_else(|| panic!("layer {source}'s keys and values are shared but it has not run"))
    }

    /// Adds a sharing layer's gradients of layer `source`'s keys and values.
    pub(crate) fn add_grads(&mut self, source: usize, dk: Tensor<B, 4>, dv: Tensor<B, 4>) {
        let sum = match self.grads[source].take() {
            Some((k, v)) => (k + dk, v + dv),
            None => (dk, dv),
        };
        self.grads[source] = Some(sum);
    }

    /// The gradients every sharing layer left for layer `layer`'s keys and values, taken.
    pub(crate) fn take_grads(&mut self, layer: usize) -> Option<(Tensor<B, 4>, Tensor<B, 4>)> {
        self.grads[layer].take()
    }
}
