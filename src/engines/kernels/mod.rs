//! CPU kernels that candle lacks: dense layers on the dot-product instructions of current x86 CPUs.
//!
//! Each kernel is optional at run time (`supported()`), so engines keep candle's f32 path on other
//! CPUs and when an operator asks for full precision.

pub mod bf16;
pub mod elementwise;
pub mod quantized;
