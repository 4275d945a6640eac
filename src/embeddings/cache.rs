//! The per-model LRU cache of embeddings, keyed by the exact input text.

use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

/// A cached vector (full dimension) and the token count of its text.
pub type CachedEmbedding = (Arc<[f32]>, usize);

/// Full-dimension vectors and their token counts; the lock is held only for a lookup or an insert.
pub struct EmbeddingCache {
    entries: Mutex<LruCache<String, CachedEmbedding>>,
}

impl EmbeddingCache {
    /// A cache of `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity.max(1)).expect("at least 1");
        Self { entries: Mutex::new(LruCache::new(capacity)) }
    }

    /// The vector and token count of a text, refreshing its recency.
    pub fn get(&self, text: &str) -> Option<CachedEmbedding> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).get(text).cloned()
    }

    /// Stores a vector.
    pub fn put(&self, text: &str, vector: Arc<[f32]>, tokens: usize) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).put(text.to_string(), (vector, tokens));
    }
}
