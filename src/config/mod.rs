//! Configuration: the roster file, the one typed [`Settings`] struct built from
//! CLI flags > environment > roster `[settings]` > defaults, and each model's effective
//! [`ModelSettings`] (its roster overrides applied once).

pub mod model;
pub mod roster;
pub mod seed_catalog;
pub mod settings;

pub use model::ModelSettings;
pub use roster::{Capability, ModelEntry, PackageSource, Precision, Roster};
pub use settings::{ConfigError, Overrides, Settings};
