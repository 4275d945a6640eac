//! Finding model files (a local folder, the Hugging Face cache, a Hub download, or a package index)
//! and, for a model named only by its Hub id, what kind of model it is.

pub mod detect;
pub mod hub;
pub mod package_index;
pub mod resolve;

pub use hub::Sources;
pub use resolve::{locate, resolve, ResolveError, Resolved};
