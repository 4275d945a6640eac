//! Shared by the criterion benches: find a roster model's files in the Hugging Face cache.

use sis::config::{ModelEntry, Overrides, Settings};
use sis::models::resolve;
use std::path::PathBuf;

/// The roster entry `id` of `config/models.toml` (selected even when disabled) and its folder.
pub fn model(id: &str) -> (ModelEntry, PathBuf) {
    let overrides = Overrides {
        config: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/config/models.toml").into()),
        ..Default::default()
    };
    let (settings, roster) = Settings::load(&overrides).expect("roster");
    let entry = roster.select(&[id.to_string()]).expect("entry").remove(0);
    let found = resolve(&entry, &settings.hf_cache, false).expect("run `sis models pull` first");
    (entry, found.dir)
}
