//! Vision input: loading `image_url` parts safely and preparing images for a vision model.

pub mod image_source;
pub mod preprocess;
