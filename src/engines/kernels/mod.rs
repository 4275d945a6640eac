//! CPU kernels that candle lacks: dense layers on the dot-product instructions of current x86 CPUs.
//!
//! Each kernel is optional at run time (`supported()`), so engines keep candle's f32 path on other
//! CPUs and when an operator asks for full precision.

pub mod bf16;
pub mod elementwise;
pub mod quantized;

/// Runs `f` on a worker of rayon's pool and waits for it.
///
/// A forward pass makes hundreds of small parallel products; called from an engine's own thread, each
/// would wake the pool from outside and sleep until it is done (two context switches, tens of
/// microseconds). From a worker they fork and join inside the pool, so the engine thread waits once
/// per pass instead.
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let mut result = None;
    rayon::scope(|_| result = Some(f()));
    result.expect("rayon::scope runs its body before returning")
}

/// An output buffer handed to worker threads that each write their own disjoint part of it.
struct OutPtr(*mut f32);
// SAFETY: the kernels give each task a disjoint set of output elements, within the buffer.
unsafe impl Sync for OutPtr {}
unsafe impl Send for OutPtr {}
