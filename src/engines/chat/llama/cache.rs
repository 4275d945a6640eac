//! The KV cache of one sequence: flat f32 rows per layer, appended to as the sequence grows and read by
//! the cached attention of each step.

/// The KV cache of one sequence: per layer, keys and values of every position so far.
#[derive(Default)]
pub struct KvCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    len: usize,
    /// Rotary position of cache slot `i` is `i + rope_delta` for text tokens; images take fewer
    /// positions than tokens, so after one the positions run behind the slots (Qwen3-VL).
    pub rope_delta: i64,
}

impl KvCache {
    /// An empty cache for a model with `layers` layers.
    pub(super) fn new(layers: usize) -> Self {
        Self { keys: vec![Vec::new(); layers], values: vec![Vec::new(); layers], len: 0, rope_delta: 0 }
    }

    /// Appends a layer's keys and values of the step's new positions (not counted until [`Self::advance`]).
    pub(super) fn append(&mut self, layer: usize, keys: &[f32], values: &[f32]) {
        self.keys[layer].extend_from_slice(keys);
        self.values[layer].extend_from_slice(values);
    }

    /// Counts `n` new positions, once every layer has appended them.
    pub(super) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// A layer's keys and values, `[positions, kv_heads·head_dim]` each.
    pub(super) fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.keys[layer], &self.values[layer])
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
