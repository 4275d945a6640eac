//! Model id → handle lookup shared by every HTTP worker.

use dashmap::DashMap;
use std::sync::Arc;

/// A concurrent map from API model ids to whatever the application keeps per model
/// (actor addresses, admission queue, status).
#[derive(Debug)]
pub struct Registry<T> {
    models: DashMap<String, Arc<T>>,
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Self { models: DashMap::new() }
    }
}

impl<T> Registry<T> {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a model; returns the previous handle.
    pub fn insert(&self, id: impl Into<String>, handle: T) -> Option<Arc<T>> {
        self.models.insert(id.into(), Arc::new(handle))
    }

    /// The handle of a model, if it is served.
    pub fn get(&self, id: &str) -> Option<Arc<T>> {
        self.models.get(id).map(|entry| entry.value().clone())
    }

    /// Removes a model; returns its handle.
    pub fn remove(&self, id: &str) -> Option<Arc<T>> {
        self.models.remove(id).map(|(_, handle)| handle)
    }

    /// Every served model, sorted by id so listings are stable.
    pub fn all(&self) -> Vec<(String, Arc<T>)> {
        let mut all: Vec<_> = self.models.iter().map(|e| (e.key().clone(), e.value().clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Number of models.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// Whether no model is served.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}
