//! Shared by the criterion benches: find a roster model's files in the Hugging Face cache.

use sis::config::{ModelEntry, Overrides, Settings};
use sis::models::resolve;
use std::path::PathBuf;

/// The name of a criterion group measured under the current `SIS_CPU_KERNELS`: `name` under `auto`,
/// `name@reference`, `name@avx2`… under a forced family, so that paths keep separate baselines.
pub fn group(name: &str) -> String {
    let selection = sis::engines::kernels::selection().unwrap_or_else(|e| panic!("{e}"));
    match selection.request() {
        sis::engines::kernels::Request::Auto => name.to_string(),
        request => format!("{name}@{}", request.name()),
    }
}

/// Prints the kernels a model runs, so each figure says which path it measured.
pub fn announce(model: &str, kernels: &[String]) {
    let selection = sis::engines::kernels::selection().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{model}: SIS_CPU_KERNELS = {}; {}", selection.describe(), kernels.join("; "));
}

/// The roster entry `id` of `config/models.toml` (selected even when disabled) and its folder.
pub fn model(id: &str) -> (ModelEntry, PathBuf) {
    let overrides = Overrides {
        config: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/config/models.toml").into()),
        ..Default::default()
    };
    let (settings, roster) = Settings::load(&overrides).expect("roster");
    let entry = roster.select(&[id.to_string()]).expect("entry").remove(0);
    let sources = sis::models::Sources { download: false, ..sis::models::Sources::new(&settings) };
    let found = resolve(&entry, &sources).expect("run `sis models pull` first");
    (entry, found.dir)
}
