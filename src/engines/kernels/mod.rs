//! CPU kernels that candle lacks, and which of them run.
//!
//! Every hot operation has a **reference path** written with candle ops (a matmul, a quantized matmul,
//! a softmax): it runs on any CPU and on GPUs, and it is what runs wherever a kernel is missing. On the
//! CPU, sis's own kernels replace some of those operations:
//!
//! | kernel | replaces | needs |
//! |---|---|---|
//! | [`fma`]: dense layers on f32 FMA | candle's f32 matmul | AVX2 + FMA ([`Avx2`]) or AVX-512 ([`Avx512`]) |
//! | [`bf16`]: dense layers on bf16 dot products | candle's f32 matmul | AVX-512 F + BF16 ([`Avx512Bf16`]) |
//! | [`quantized`]: int8 dot products on GGUF weights | candle's quantized matmul | AVX2 + F16C ([`Avx2`], `vpmaddubsw`) or AVX-512 VNNI ([`Avx512Vnni`], `vpdpbusd`) |
//! | [`elementwise`] and the attention loops | candle's softmax, GeLU and attention ops | nothing ([`Simd::Portable`]); faster builds for AVX2 and AVX-512 ([`Simd`]) |
//!
//! Where several dense kernels run here, which is fastest depends on the CPU more than on the
//! instructions (on some Xeons a bf16 dot product is no faster than an f32 FMA), so each model times
//! them on its own shapes when it is resolved and keeps the fastest ([`measure`]).
//!
//! A kernel that needs instructions takes a token (a zero-sized proof) that only `detect()` makes, on a
//! CPU that has them (never off x86-64, where the kernels' code is not even compiled). So a packed kernel
//! value is itself the proof that its instructions run here, and every function that reaches
//! `#[target_feature]` code is safe to call.
//!
//! Which kernels run is the operator's choice, `SIS_CPU_KERNELS` ([`selection`]): `auto` (the best this
//! CPU has), `reference` (candle ops only), or a family, `portable`, `avx2` or `avx512`, which must be
//! available whole or start-up fails.

use std::sync::OnceLock;

use crate::config::roster::Precision;

pub mod bf16;
pub mod elementwise;
pub mod fma;
pub mod measure;
pub mod quantized;

/// What a token holds: nothing, behind a private field, so that only `detect()` makes tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Proof(());

/// Defines a token type that proves a set of x86 features; the list must be the one the code it guards
/// is compiled for (`#[target_feature(enable = ...)]`), and `build.rs` tests the same sets.
macro_rules! cpu_token {
    ($(#[$doc:meta])* $name:ident, $label:literal, [$($feature:tt),+]) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name(Proof);

        impl $name {
            /// The instructions it stands for, as people name them.
            pub const NEEDS: &'static str = $label;

            /// The token, where this CPU has every one of the features (checked at run time); never
            /// off x86-64.
            pub fn detect() -> Option<Self> {
                #[cfg(target_arch = "x86_64")]
                if $(std::arch::is_x86_feature_detected!($feature))&&+ {
                    return Some(Self(Proof(())));
                }
                None
            }
        }
    };
}

cpu_token!(
    /// Proof that the CPU runs AVX2, FMA and F16C (the AVX2 builds of the loops and kernels; every CPU
    /// with AVX2 has the other two).
    Avx2, "AVX2, FMA and F16C", ["avx2", "fma", "f16c"]
);
cpu_token!(
    /// Proof that the CPU runs AVX-512 F, BW, DQ and VL, and FMA (the AVX-512 build of the loops).
    Avx512, "AVX-512 F/BW/DQ/VL", ["avx512f", "avx512bw", "avx512dq", "avx512vl", "fma"]
);
cpu_token!(
    /// Proof that the CPU runs AVX-512 F and BF16 (the bf16 dense kernel).
    Avx512Bf16, "AVX-512 BF16", ["avx512f", "avx512bf16"]
);
cpu_token!(
    /// Proof that the CPU runs AVX-512 F, BW and VNNI, and F16C (the int8 quantized kernel).
    Avx512Vnni, "AVX-512 VNNI", ["avx512f", "avx512bw", "avx512vnni", "f16c"]
);

/// The instruction set sis's own loops (softmax, GeLU, the attention of short sequences) are compiled
/// for. The loops are written so that no build reorders a floating-point sum: every build gives the same
/// bits, only faster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    /// The build's baseline (SSE2 on x86-64, NEON on aarch64): runs on every CPU.
    Portable,
    /// Compiled for AVX2 and FMA.
    Avx2(Avx2),
    /// Compiled for AVX-512 (sixteen lanes).
    Avx512(Avx512),
}

impl Simd {
    /// The widest build this CPU runs.
    pub fn best() -> Self {
        Avx512::detect().map(Simd::Avx512).or_else(|| Avx2::detect().map(Simd::Avx2)).unwrap_or(Simd::Portable)
    }

    /// Every build this CPU runs, narrowest first.
    pub fn available() -> Vec<Self> {
        let mut all = vec![Simd::Portable];
        all.extend(Avx2::detect().map(Simd::Avx2));
        all.extend(Avx512::detect().map(Simd::Avx512));
        all
    }

    /// The f32 GEMM of the same build, where there is one.
    pub fn fma(self) -> Option<Fma> {
        match self {
            Simd::Portable => None,
            Simd::Avx2(t) => Some(Fma::Avx2(t)),
            Simd::Avx512(t) => Some(Fma::Avx512(t)),
        }
    }

    /// `portable`, `avx2` or `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            Simd::Portable => "portable",
            Simd::Avx2(_) => "avx2",
            Simd::Avx512(_) => "avx512",
        }
    }
}

/// The f32 GEMM's build ([`fma`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fma {
    /// Eight lanes.
    Avx2(Avx2),
    /// Sixteen lanes.
    Avx512(Avx512),
}

/// The int8 kernel's build ([`quantized`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int8 {
    /// `vpmaddubsw`, eight columns per vector.
    Avx2(Avx2),
    /// `vpdpbusd`, sixteen columns per vector.
    Vnni(Avx512Vnni),
}

impl Int8 {
    /// `int8-avx2` or `vnni-avx512`.
    pub fn name(self) -> &'static str {
        match self {
            Int8::Avx2(_) => "int8-avx2",
            Int8::Vnni(_) => "vnni-avx512",
        }
    }
}

/// What a dense layer (`x · Wᵀ + b`, f32 weights) runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenseKernel {
    /// candle's f32 matmul.
    Reference,
    /// sis's f32 GEMM.
    Fma(Fma),
    /// sis's bf16 GEMM (bf16 products, f32 sums).
    Bf16(Avx512Bf16),
}

impl DenseKernel {
    /// `reference`, `fma-avx2`, `fma-avx512` or `bf16-avx512`.
    pub fn name(self) -> &'static str {
        match self {
            DenseKernel::Reference => "reference",
            DenseKernel::Fma(Fma::Avx2(_)) => "fma-avx2",
            DenseKernel::Fma(Fma::Avx512(_)) => "fma-avx512",
            DenseKernel::Bf16(_) => "bf16-avx512",
        }
    }
}

/// The kernels one model runs; [`Kernels::REFERENCE`] is the reference path (candle ops only).
///
/// The fields hold tokens, which cannot be forged, so any value of this type is safe to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernels {
    /// sis's loops (softmax, GeLU, short attention) and their build; `None`: candle's ops.
    pub simd: Option<Simd>,
    /// Dense layers.
    pub dense: DenseKernel,
    /// bf16 products for the attention of long sequences; `None`: candle's f32 matmul.
    pub bf16: Option<Avx512Bf16>,
    /// The int8 quantized kernel; `None`: candle's quantized matmul.
    pub int8: Option<Int8>,
    /// How `dense` was chosen, where it was measured against other candidates.
    pub measured: Option<&'static measure::Measurement>,
    /// `precision = "f32"`: no reduced-precision copies of f32 weights (bf16 products, 8-bit output
    /// projections), only what the reference computes.
    pub exact: bool,
}

impl Kernels {
    /// Candle ops only.
    pub const REFERENCE: Kernels =
        Kernels { simd: None, dense: DenseKernel::Reference, bf16: None, int8: None, measured: None, exact: false };

    /// What dense layers run on (see [`DenseKernel::name`]).
    pub fn dense(&self) -> &'static str {
        self.dense.name()
    }

    /// What dense layers run on, and the timings that chose it where it was measured:
    /// `fma-avx2 (measured: fma-avx2 1.21 ms, reference 3.02 ms)`.
    pub fn dense_report(&self) -> String {
        match self.measured {
            Some(m) => format!("{} ({})", self.dense(), m.describe()),
            None => self.dense().to_string(),
        }
    }

    /// What quantized products run on: `int8-avx2`, `vnni-avx512` or `reference`.
    pub fn quantized(&self) -> &'static str {
        self.int8.map_or("reference", Int8::name)
    }

    /// What softmax and GeLU run on: the loops' build, or `reference`.
    pub fn loops(&self) -> &'static str {
        self.simd.map_or("reference", Simd::name)
    }
}

/// The values `SIS_CPU_KERNELS` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// The best kernels this CPU runs, each chosen on its own (the default).
    Auto,
    /// candle ops only: none of sis's kernels.
    Reference,
    /// sis's loops in their baseline build; dense and quantized products on candle.
    Portable,
    /// Every AVX2 kernel: the loops' AVX2 build, the f32 GEMM's and the int8 kernel's.
    Avx2,
    /// Every AVX-512 kernel: the loops' AVX-512 build, bf16 or f32 dense layers (whichever measures
    /// faster) and int8 quantized products on VNNI.
    Avx512,
}

impl Request {
    /// Every value, in the order the help text lists them.
    pub const ALL: [Request; 5] =
        [Request::Auto, Request::Reference, Request::Portable, Request::Avx2, Request::Avx512];

    /// The value as written in `SIS_CPU_KERNELS`.
    pub fn name(self) -> &'static str {
        match self {
            Request::Auto => "auto",
            Request::Reference => "reference",
            Request::Portable => "portable",
            Request::Avx2 => "avx2",
            Request::Avx512 => "avx512",
        }
    }

    /// Parses a value (case and surrounding blanks ignored; empty means `auto`).
    pub fn parse(value: &str) -> Result<Self, KernelError> {
        let value = value.trim().to_ascii_lowercase();
        if value.is_empty() {
            return Ok(Request::Auto);
        }
        Request::ALL.into_iter().find(|r| r.name() == value).ok_or(KernelError::Unknown(value))
    }
}

/// Why a kernel selection cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// `SIS_CPU_KERNELS` names no family.
    #[error("SIS_CPU_KERNELS={0:?} is not one of auto, reference, portable, avx2, avx512")]
    Unknown(String),
    /// The CPU lacks instructions a forced family needs.
    #[error(
        "SIS_CPU_KERNELS={family} needs {missing}, which this CPU lacks (auto picks the best kernels it has, \
         reference runs candle's ops only)"
    )]
    Unavailable {
        /// The family asked for.
        family: &'static str,
        /// What the CPU lacks.
        missing: String,
    },
    /// `precision = "bf16"` where the bf16 kernel does not run.
    #[error("precision = \"bf16\" needs the bf16-avx512 kernel: {0}")]
    NoBf16(String),
}

/// The kernels the operator selected for this process, resolved against the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selection {
    request: Request,
    kernels: Kernels,
}

impl Selection {
    /// Resolves a request on this CPU; a forced family must be available whole.
    pub fn resolve(request: Request) -> Result<Self, KernelError> {
        let unavailable =
            |missing: Vec<&str>| KernelError::Unavailable { family: request.name(), missing: missing.join(", ") };
        let mut kernels = match request {
            Request::Auto => Kernels {
                simd: Some(Simd::best()),
                bf16: Avx512Bf16::detect(),
                int8: Avx512Vnni::detect().map(Int8::Vnni).or_else(|| Avx2::detect().map(Int8::Avx2)),
                ..Kernels::REFERENCE
            },
            Request::Reference => Kernels::REFERENCE,
            Request::Portable => Kernels { simd: Some(Simd::Portable), ..Kernels::REFERENCE },
            Request::Avx2 => {
                let avx2 = Avx2::detect().ok_or_else(|| unavailable(vec![Avx2::NEEDS]))?;
                Kernels { simd: Some(Simd::Avx2(avx2)), int8: Some(Int8::Avx2(avx2)), ..Kernels::REFERENCE }
            }
            Request::Avx512 => match (Avx512::detect(), Avx512Bf16::detect(), Avx512Vnni::detect()) {
                (Some(avx512), Some(bf16), Some(vnni)) => Kernels {
                    simd: Some(Simd::Avx512(avx512)),
                    bf16: Some(bf16),
                    int8: Some(Int8::Vnni(vnni)),
                    ..Kernels::REFERENCE
                },
                (avx512, bf16, vnni) => {
                    let mut missing = Vec::new();
                    if avx512.is_none() {
                        missing.push(Avx512::NEEDS);
                    }
                    if bf16.is_none() {
                        missing.push(Avx512Bf16::NEEDS);
                    }
                    if vnni.is_none() {
                        missing.push(Avx512Vnni::NEEDS);
                    }
                    return Err(unavailable(missing));
                }
            },
        };
        kernels.dense = Self { request, kernels }.dense_candidates()[0];
        Ok(Self { request, kernels })
    }

    /// Parses and resolves a `SIS_CPU_KERNELS` value.
    pub fn parse(value: &str) -> Result<Self, KernelError> {
        Self::resolve(Request::parse(value)?)
    }

    /// candle ops only.
    pub fn reference() -> Self {
        Self { request: Request::Reference, kernels: Kernels::REFERENCE }
    }

    /// What was asked for.
    pub fn request(&self) -> Request {
        self.request
    }

    /// The kernels selected, before any model's precision or measurement (dense layers: the first
    /// candidate).
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// The dense kernels this selection may run, the one to prefer unmeasured first: under `auto` every
    /// one this CPU has, under a family its own.
    pub fn dense_candidates(&self) -> Vec<DenseKernel> {
        let mut all = Vec::new();
        match self.request {
            Request::Auto => {
                all.extend(Avx512Bf16::detect().map(DenseKernel::Bf16));
                all.extend(Avx512::detect().map(|t| DenseKernel::Fma(Fma::Avx512(t))));
                all.extend(Avx2::detect().map(|t| DenseKernel::Fma(Fma::Avx2(t))));
                all.push(DenseKernel::Reference);
            }
            Request::Reference | Request::Portable => all.push(DenseKernel::Reference),
            Request::Avx2 => all.extend(Avx2::detect().map(|t| DenseKernel::Fma(Fma::Avx2(t)))),
            Request::Avx512 => {
                all.extend(Avx512Bf16::detect().map(DenseKernel::Bf16));
                all.extend(Avx512::detect().map(|t| DenseKernel::Fma(Fma::Avx512(t))));
            }
        }
        if all.is_empty() {
            all.push(DenseKernel::Reference);
        }
        all
    }

    /// One line for logs: `auto: loops avx2, dense fma-avx2 or reference (measured per model), quantized
    /// int8-avx2`.
    pub fn describe(&self) -> String {
        let k = &self.kernels;
        let dense: Vec<&str> = self.dense_candidates().iter().map(|d| d.name()).collect();
        let dense = match dense.len() {
            1 => dense[0].to_string(),
            _ => format!("{} (measured per model)", dense.join(" or ")),
        };
        format!("{}: loops {}, dense {dense}, quantized {}", self.request.name(), k.loops(), k.quantized())
    }

    /// The kernels of a model with this `precision` on a device (`cpu` true for the CPU; other devices
    /// run the reference path), its dense layers chosen among the candidates by timing them on `shapes`
    /// (`(rows, out, in)`: the model's own products; empty: the preferred candidate, unmeasured). `f32`
    /// takes bf16 out of the candidates; `bf16` fails where the bf16 kernel does not run.
    ///
    /// Every candidate meets the model's accuracy bound: the f32 kernels compute what the reference
    /// does, and bf16 products keep embeddings within 1e-3 cosine of f32 (`tests/embeddings.rs`);
    /// `precision = "f32"` is the operator's way to refuse that rounding.
    pub fn for_model(
        &self,
        precision: Precision,
        cpu: bool,
        shapes: &[measure::Shape],
    ) -> Result<Kernels, KernelError> {
        let mut kernels = if cpu { self.kernels } else { Kernels::REFERENCE };
        let mut candidates = if cpu { self.dense_candidates() } else { vec![DenseKernel::Reference] };
        match precision {
            Precision::Auto => {}
            Precision::F32 => {
                kernels.bf16 = None;
                kernels.exact = true;
                candidates.retain(|c| !matches!(c, DenseKernel::Bf16(_)));
            }
            Precision::Bf16 if kernels.bf16.is_some() => candidates.retain(|c| matches!(c, DenseKernel::Bf16(_))),
            Precision::Bf16 => {
                let why = if !cpu {
                    "it runs on the CPU only".to_string()
                } else if Avx512Bf16::detect().is_none() {
                    format!("this CPU lacks {}", Avx512Bf16::NEEDS)
                } else {
                    format!("SIS_CPU_KERNELS={} turns it off", self.request.name())
                };
                return Err(KernelError::NoBf16(why));
            }
        }
        kernels.dense = candidates.first().copied().unwrap_or(DenseKernel::Reference);
        if candidates.len() > 1 && !shapes.is_empty() {
            let measurement = measure::dense(&candidates, shapes);
            kernels.dense = measurement.fastest();
            kernels.measured = Some(measurement);
        }
        Ok(kernels)
    }
}

/// The operator's selection: `SIS_CPU_KERNELS`, read and resolved once per process. Fails for a value
/// that names no family, or a family this CPU cannot run.
pub fn selection() -> Result<Selection, KernelError> {
    static SELECTION: OnceLock<Result<Selection, KernelError>> = OnceLock::new();
    SELECTION
        .get_or_init(|| {
            let value = std::env::var_os("SIS_CPU_KERNELS").unwrap_or_default();
            Selection::parse(&value.to_string_lossy())
        })
        .clone()
}

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

    /// How many threads the pool has.
    pub fn threads(&self) -> usize {
        self.0.current_num_threads()
    }

    /// Runs `f` on a worker of the pool and waits for it.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.0.install(f)
    }
}

/// Deterministic values in [-1, 1] (an xorshift sequence from `seed`): the operands kernels are timed
/// ([`measure`]) and tested on.
pub(crate) fn sample_values(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// An output buffer handed to worker threads that each write their own disjoint part of it.
struct OutPtr(*mut f32);
// SAFETY: the kernels give each task a disjoint set of output elements, within the buffer.
unsafe impl Sync for OutPtr {}
unsafe impl Send for OutPtr {}

/// What a kernel test says where `build.rs` saw the instructions on the build host but this CPU lacks
/// them (a test binary built on one machine and run on another): a failure, never a silent pass.
#[cfg(test)]
pub(crate) const STALE_BUILD: &str =
    "the build host had these instructions but this CPU lacks them: rebuild the tests here (touch build.rs)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_parses_and_unknown_values_fail_with_the_list() {
        for request in Request::ALL {
            assert_eq!(Request::parse(request.name()), Ok(request));
        }
        assert_eq!(Request::parse(" AVX2 "), Ok(Request::Avx2));
        assert_eq!(Request::parse(""), Ok(Request::Auto));
        let err = Selection::parse("sse9").unwrap_err();
        assert!(err.to_string().contains("auto, reference, portable, avx2, avx512"), "{err}");
    }

    #[test]
    fn auto_takes_what_the_cpu_has_and_reference_takes_nothing() {
        let auto = Selection::parse("auto").unwrap().kernels();
        assert_eq!(auto.simd, Some(Simd::best()));
        assert_eq!(auto.bf16, Avx512Bf16::detect());
        let int8 = Avx512Vnni::detect().map(Int8::Vnni).or_else(|| Avx2::detect().map(Int8::Avx2));
        assert_eq!(auto.int8, int8);
        let candidates = Selection::parse("auto").unwrap().dense_candidates();
        assert_eq!(candidates.last(), Some(&DenseKernel::Reference));
        assert_eq!(candidates.len() > 1, Avx2::detect().is_some() || Avx512::detect().is_some());
        assert_eq!(Selection::parse("reference").unwrap().kernels(), Kernels::REFERENCE);
        assert_eq!(Selection::parse("portable").unwrap().kernels().simd, Some(Simd::Portable));
    }

    #[test]
    fn a_forced_family_runs_whole_or_fails_naming_what_is_missing() {
        match (Avx2::detect(), Selection::parse("avx2")) {
            (Some(avx2), Ok(s)) => {
                let want = Kernels {
                    simd: Some(Simd::Avx2(avx2)),
                    dense: DenseKernel::Fma(Fma::Avx2(avx2)),
                    int8: Some(Int8::Avx2(avx2)),
                    ..Kernels::REFERENCE
                };
                assert_eq!(s.kernels(), want);
                assert_eq!(s.dense_candidates(), [want.dense], "a forced family is not measured");
            }
            (None, Err(e)) => assert!(e.to_string().contains("AVX2"), "{e}"),
            (cpu, got) => panic!("CPU {cpu:?}, selection {got:?}"),
        }
        let whole = Avx512::detect().is_some() && Avx512Bf16::detect().is_some() && Avx512Vnni::detect().is_some();
        match Selection::parse("avx512") {
            Ok(s) => {
                assert!(whole);
                let k = s.kernels();
                assert!(matches!(k.simd, Some(Simd::Avx512(_))) && k.bf16.is_some());
                assert!(matches!(k.int8, Some(Int8::Vnni(_))));
            }
            Err(e) => {
                assert!(!whole);
                assert!(e.to_string().contains("SIS_CPU_KERNELS=avx512 needs AVX-512"), "{e}");
            }
        }
    }

    #[test]
    fn precision_f32_turns_bf16_off_and_bf16_insists() {
        let auto = Selection::parse("auto").unwrap();
        let f32 = auto.for_model(Precision::F32, true, &[]).unwrap();
        assert_eq!(f32.bf16, None);
        assert!(!matches!(f32.dense, DenseKernel::Bf16(_)));
        assert_eq!(auto.for_model(Precision::Auto, false, &[]).unwrap(), Kernels::REFERENCE);
        assert!(auto.for_model(Precision::Bf16, false, &[]).is_err());
        let bf16 = auto.for_model(Precision::Bf16, true, &[(64, 64, 64)]);
        assert_eq!(bf16.is_ok(), Avx512Bf16::detect().is_some());
        assert!(bf16.map_or(true, |k| matches!(k.dense, DenseKernel::Bf16(_)) && k.measured.is_none()));
        let err = Selection::reference().for_model(Precision::Bf16, true, &[]).unwrap_err().to_string();
        assert!(err.contains("precision = \"bf16\""), "{err}");
    }
}
