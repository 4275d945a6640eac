//! The per-model LRU cache of embeddings, keyed by the exact input text.

use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

/// Full-dimension vectors and their token counts; the lock is held only for a lookup or an insert.
pub struct EmbeddingCache {
    entries: Mutex<LruCache<String, (Arc<[f32]>, usize)>>,
}

impl EmbeddingCache {
    /// A cache of `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity.max(1)).expect("at least 1");
        Self {
            entries: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// The vector and token count of a text, refreshing its recency.
    pub fn get(&self, text: &str) -> Option<(Arc<[f32]>, usize)> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(text)
            .cloned()
    }

    /// Stores a vector.
    pub fn put(&self, text: &str, vector: Arc<[f32]>, tokens: usize) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(text.to_string(), (vector, tokens));
    }
}
