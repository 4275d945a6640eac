//! Configuration: the roster file and the one typed [`Settings`] struct built from
//! CLI flags > environment > roster `[settings]` > defaults.

pub mod roster;
pub mod settings;

pub use roster::{ModelEntry, ModelKind, PackageSource, Roster};
pub use settings::{ConfigError, Overrides, Settings};
