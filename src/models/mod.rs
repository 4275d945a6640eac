//! Finding model files: a local folder, the Hugging Face cache, a Hub download, or a package index.

pub mod package_index;
pub mod resolve;

pub use resolve::{resolve, ResolveError, Resolved};
