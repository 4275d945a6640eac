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
    /// Rotary position of cache slot `i` is `i + rope_delta` for text tokens; images take fewer
    /// positions than tokens, so after one the positions run behind the slots (Qwen3-VL).
    pub rope_delta: i64,
}

/// A [`KvCache`]'s length and contents at one moment (device tensors are shared, not copied).
pub(crate) struct CacheMark {
    len: usize,
    rows: Vec<usize>,
    tensors: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// An empty cache for a model with `layers` layers.
    pub(super) fn new(layers: usize) -> Self {
        Self {
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

    /// Where the cache stands, to [rewind](Self::rewind) to if a step fails part-way.
    pub(crate) fn mark(&self) -> CacheMark {
        CacheMark { len: self.len, rows: self.keys.iter().map(Vec::len).collect(), tensors: self.tensors.clone() }
    }

    /// Forgets what was appended since `mark`.
    pub(crate) fn rewind(&mut self, mark: CacheMark) {
        self.len = mark.len;
        for ((keys, values), rows) in self.keys.iter_mut().zip(&mut self.values).zip(mark.rows) {
            keys.truncate(rows);
            values.truncate(rows);
        }
        self.tensors = mark.tensors;
    }

    /// Bytes the cache holds (host rows and device tensors).
    pub fn bytes(&self) -> usize {
        let host: usize = self.keys.iter().chain(&self.values).map(|l| l.len() * 4).sum();
        let device: usize = self
            .tensors
            .iter()
            .flatten()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum();
        host + device
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
