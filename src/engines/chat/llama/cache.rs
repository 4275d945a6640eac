//! The KV cache of one sequence, per layer: flat f32 rows on the host for the CPU kernels' attention,
//! or tensors on the model's device (`[kv_heads, positions, head_dim]`) for the tensor path's.

use candle_core::{Result, Tensor};

/// The KV cache of one sequence: per layer, keys and values of every position so far.
#[derive(Default)]
pub struct KvCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    /// The tensor path's keys and values, `[kv_heads, positions, head_dim]` each, on the model's device.
    tensors: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
    /// Values in one position's key (or value) row of a layer: `kv_heads · head_dim`.
    width: usize,
    /// Rotary position of cache slot `i` is `i + rope_delta` for text tokens; images take fewer
    /// positions than tokens, so after one the positions run behind the slots (Qwen3-VL).
    pub rope_delta: i64,
}

impl KvCache {
    /// An empty cache for a model with `layers` layers whose key (and value) rows are `width` wide.
    pub(super) fn new(layers: usize, width: usize) -> Self {
        Self {
            width,
            keys: vec![Vec::new(); layers],
            values: vec![Vec::new(); layers],
            tensors: vec![None; layers],
            len: 0,
            rope_delta: 0,
        }
    }

    /// Appends a layer's keys and values of the step's new positions (not counted until [`Self::advance`]).
    pub(super) fn append(&mut self, layer: usize, keys: &[f32], values: &[f32]) {
        self.keys[layer].extend_from_slice(keys);
        self.values[layer].extend_from_slice(values);
    }

    /// The tensor path's [`Self::append`]: `keys` and `values` are `[kv_heads, new positions, head_dim]`.
    /// Returns the layer's whole keys and values, new positions included.
    pub(super) fn append_tensors(&mut self, layer: usize, keys: &Tensor, values: &Tensor) -> Result<(Tensor, Tensor)> {
        if self.tensors.len() <= layer {
            self.tensors.resize(layer + 1, None);
        }
        let joined = match &self.tensors[layer] {
            Some((k, v)) => (Tensor::cat(&[k, keys], 1)?, Tensor::cat(&[v, values], 1)?),
            None => (keys.contiguous()?, values.contiguous()?),
        };
        self.tensors[layer] = Some(joined.clone());
        Ok(joined)
    }

    /// Counts `n` new positions, once every layer has appended them.
    pub(super) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// A layer's keys and values, `[positions, kv_heads·head_dim]` each.
    pub(super) fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.keys[layer], &self.values[layer])
    }

    /// Forgets every position from `len` on (a length the cache had before a step): what a step that
    /// failed part-way appended to some of its layers, or a whole step that must be run again.
    pub(crate) fn rewind(&mut self, len: usize) -> Result<()> {
        self.len = len;
        for (keys, values) in self.keys.iter_mut().zip(&mut self.values) {
            keys.truncate(len * self.width);
            values.truncate(len * self.width);
        }
        for layer in &mut self.tensors {
            *layer = match layer.take() {
                Some((k, v)) if len > 0 => Some((k.narrow(1, 0, len)?, v.narrow(1, 0, len)?)),
                _ => None,
            };
        }
        Ok(())
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
