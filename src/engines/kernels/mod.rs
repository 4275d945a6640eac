//! CPU kernels that candle lacks: dense layers on the dot-product instructions of current x86 CPUs.
//!
//! Each kernel is optional at run time (`supported()`), so engines keep candle's f32 path on other
//! CPUs and when an operator asks for full precision.

pub mod bf16;
pub mod elementwise;
pub mod quantized;

/// An engine's own thread pool, which its forward passes run on.
///
/// A forward pass makes hundreds of small parallel products. Called from the engine's thread, each
/// would wake a pool from outside and sleep until it is done (two context switches, tens of
/// microseconds); run on a worker, they fork and join inside the pool and the engine thread waits once
/// per pass. The pool is the engine's own, not rayon's global one, because a worker waiting on a join
/// takes other jobs of its pool meanwhile: in a shared pool, one model's decode step could wait behind
/// another model's whole forward pass. Threads: `RAYON_NUM_THREADS`, else one per CPU.
pub struct Pool(rayon::ThreadPool);

impl Pool {
    /// A pool whose threads are named after `name`.
    pub fn new(name: &str) -> std::io::Result<Self> {
        let name = name.to_string();
        rayon::ThreadPoolBuilder::new()
            .thread_name(move |i| format!("{name}-{i}"))
            .build()
            .map(Pool)
            .map_err(std::io::Error::other)
    }

    /// Runs `f` on a worker of the pool and waits for it.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.0.install(f)
    }
}

/// An output buffer handed to worker threads that each write their own disjoint part of it.
struct OutPtr(*mut f32);
// SAFETY: the kernels give each task a disjoint set of output elements, within the buffer.
unsafe impl Sync for OutPtr {}
unsafe impl Send for OutPtr {}
