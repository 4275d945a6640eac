//! An f32 GEMM for `x · Wᵀ + b` on FMA: AVX2 (eight lanes) or AVX-512 (sixteen).
//!
//! candle's f32 matmul packs the weight on every call and reaches about a quarter of an FMA core's peak
//! on the encoders' shapes; this kernel packs each weight once at load ([`PackedF32`]) and multiplies in
//! register tiles of 6 rows × 2 vectors (12 accumulators, which hide the FMA latency on Intel's and
//! AMD's cores alike). On CPUs whose bf16 dot product is no faster than an f32 FMA (Intel Xeons of the
//! Ice Lake and Sapphire Rapids generations), it is also the faster kernel of the two, and it needs no
//! rounding: results are f32 sums, as on the reference path.
//!
//! Layout: output columns are grouped in panels of two vectors (16 columns on AVX2, 32 on AVX-512);
//! a panel holds, for each input position, its columns' weights side by side, so the microkernel reads
//! one contiguous stream and broadcasts one activation per row. Passes over `k` take 16 KiB of a panel
//! (which stays in L1 while every row tile of a task streams past it), and partial sums go through the
//! output, so each output element is the same ordered sum whatever the number of rows in the call:
//! results do not depend on batching.
//!
//! Weights that are exactly half-precision numbers (Whisper's checkpoints are f16 at the source) can
//! be packed as f16 ([`PackedF32::new_exact_f16`]) and widened in the microkernel (F16C): the same
//! products and sums, so the same bits, from half the bytes. That pays for the layers of decode steps,
//! which read every weight for a few rows and are bound by memory; compute-bound layers keep f32.
//!
//! A [`PackedF32`] is made from an [`Fma`] token, so holding one proves the CPU runs its build.
//! [`reference`] is what the kernel computes, in scalar code: the tests hold every build to it.

use rayon::prelude::*;

use super::{Fma, OutPtr};

/// Rows per microkernel call.
const ROWS: usize = 6;
/// Vectors per panel (columns per panel: this many vectors of the build's lanes).
const VECTORS: usize = 2;
/// Floats of a panel per pass over `k` (16 KiB: half of the smallest L1 data cache we run on).
const PASS_FLOATS: usize = 4096;
/// Rows per parallel task.
const ROWS_PER_TASK: usize = 96;
/// Columns per parallel task (a multiple of every build's panel width).
const COLS_PER_TASK: usize = 64;
/// Below this many multiply-adds a call runs on the calling thread (forking costs more).
const SERIAL_WORK: usize = 1 << 17;

/// f32 lanes per vector of a build.
fn lanes(cpu: Fma) -> usize {
    match cpu {
        Fma::Avx2(_) => 8,
        Fma::Avx512(_) => 16,
    }
}

/// The packed weights, as f32 or as exact f16.
enum Panels {
    F32(Vec<f32>),
    F16(Vec<u16>),
}

/// A `[n, k]` weight matrix (torch `Linear` layout) packed for the kernel, with its bias.
pub struct PackedF32 {
    cpu: Fma,
    n: usize,
    k: usize,
    /// Columns per panel: two vectors.
    width: usize,
    /// Per panel: `k × width` weights; columns past `n` are zero.
    data: Panels,
    /// `[panels × width]`: the bias, zero past `n`.
    bias: Vec<f32>,
}

impl PackedF32 {
    /// Packs `weight` (`[n, k]`, row-major) and `bias` (`[n]`, or empty for none) for the build that
    /// `cpu` proves runs here.
    pub fn new(cpu: Fma, weight: &[f32], n: usize, k: usize, bias: &[f32]) -> Self {
        Self::packed(cpu, weight, n, k, bias, |w| w, Panels::F32)
    }

    /// As [`PackedF32::new`], with the weights kept as f16 where every one of them is exactly a
    /// half-precision number (so the results are the same bits); `None` where one is not.
    pub fn new_exact_f16(cpu: Fma, weight: &[f32], n: usize, k: usize, bias: &[f32]) -> Option<Self> {
        let exact = weight.par_iter().all(|&w| half::f16::from_f32(w).to_f32().to_bits() == w.to_bits());
        exact.then(|| Self::packed(cpu, weight, n, k, bias, |w| half::f16::from_f32(w).to_bits(), Panels::F16))
    }

    fn packed<T: Copy + Default + Send + Sync>(
        cpu: Fma,
        weight: &[f32],
        n: usize,
        k: usize,
        bias: &[f32],
        convert: impl Fn(f32) -> T + Sync,
        panels: impl FnOnce(Vec<T>) -> Panels,
    ) -> Self {
        assert_eq!(weight.len(), n * k, "weight is not [n, k]");
        assert!(bias.is_empty() || bias.len() == n, "bias is not [n]");
        let width = VECTORS * lanes(cpu);
        let count = n.div_ceil(width);
        let mut data = vec![T::default(); count * k * width];
        let pack = |(panel, out): (usize, &mut [T])| {
            for lane in 0..width {
                let col = panel * width + lane;
                if col >= n {
                    break;
                }
                for (p, &w) in weight[col * k..(col + 1) * k].iter().enumerate() {
                    out[p * width + lane] = convert(w);
                }
            }
        };
        let chunk = (k * width).max(1);
        if n * k >= 1 << 18 {
            data.par_chunks_mut(chunk).enumerate().for_each(pack);
        } else {
            data.chunks_mut(chunk).enumerate().for_each(pack);
        }
        let mut padded = vec![0f32; count * width];
        padded[..bias.len()].copy_from_slice(bias);
        Self { cpu, n, k, width, data: panels(data), bias: padded }
    }

    /// Whether the weights are kept as f16.
    pub fn is_f16(&self) -> bool {
        matches!(self.data, Panels::F16(_))
    }

    /// Output width.
    pub fn n(&self) -> usize {
        self.n
    }

    /// `x · Wᵀ + b` for `x` of `[m, k]` (row-major); returns `[m, n]`.
    pub fn forward(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.k, "input is not [m, k]");
        let len = m * self.n;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let out_ptr = OutPtr(out.spare_capacity_mut().as_mut_ptr() as *mut f32);
        let col_blocks = self.n.div_ceil(COLS_PER_TASK);
        let row_blocks = m.div_ceil(ROWS_PER_TASK);
        let task = |task: usize| {
            let out_ptr = &out_ptr;
            let (cols, block) = (task / row_blocks, task % row_blocks);
            let rows = block * ROWS_PER_TASK..((block + 1) * ROWS_PER_TASK).min(m);
            let cols = cols * COLS_PER_TASK..((cols + 1) * COLS_PER_TASK).min(self.n);
            // SAFETY: `out` has room for `[m, n]`, `x` holds `[m, k]`; each task writes only its own
            // rows × columns of `out`.
            unsafe { self.block(x, rows, cols, out_ptr.0) }
        };
        if m * self.n * self.k < SERIAL_WORK {
            (0..col_blocks * row_blocks).for_each(task);
        } else {
            (0..col_blocks * row_blocks).into_par_iter().for_each(task);
        }
        // SAFETY: every (column block, row block) pair was a task, and `block` stores every element of
        // its rows × columns (at least one pass, even for `k = 0`).
        unsafe { out.set_len(len) };
        out
    }

    /// Every row of `rows` × every column of `cols` (`cols` starts on a panel boundary): passes over
    /// blocks of `k`, panel by panel, each panel's block kept in L1 while the row tiles stream past.
    ///
    /// SAFETY: `x` must hold `[m, k]` and `out` `[m, n]` with `rows` within `m` and `cols` within `n`.
    unsafe fn block(&self, x: &[f32], rows: std::ops::Range<usize>, cols: std::ops::Range<usize>, out: *mut f32) {
        let (k, width) = (self.k, self.width);
        let depth_per_pass = (PASS_FLOATS / width).max(1);
        let mut first = 0;
        loop {
            let depth = (k - first).min(depth_per_pass);
            let mut col = cols.start;
            while col < cols.end {
                let panel = col / width;
                let valid = (cols.end - col).min(width);
                let tiles = rows.len().div_ceil(ROWS);
                for tile in 0..tiles {
                    let row = rows.start + tile * ROWS;
                    let tile_rows = (rows.end - row).min(ROWS);
                    let at = panel * k * width + first * width;
                    let tile = Tile {
                        a: x.as_ptr().add(row * k + first),
                        lda: k,
                        b: match &self.data {
                            Panels::F32(data) => data.as_ptr().add(at).cast(),
                            Panels::F16(data) => data.as_ptr().add(at).cast(),
                        },
                        half: matches!(self.data, Panels::F16(_)),
                        depth,
                        c: out.add(row * self.n + col),
                        ldc: self.n,
                        bias: self.bias.as_ptr().add(col),
                        first: first == 0,
                    };
                    if valid == width {
                        run_tile(self.cpu, tile_rows, &tile);
                    } else {
                        edge_tile(self.cpu, tile_rows, valid, width, tile);
                    }
                }
                col += width;
            }
            first += depth;
            if first >= k {
                break;
            }
        }
    }
}

/// The last panel of a matrix whose width is not a multiple of the panel's: the tile runs on a local
/// buffer of full width, and only the valid columns go to and from the output.
///
/// SAFETY: as `run_tile`, for `valid` columns of the output.
unsafe fn edge_tile(cpu: Fma, rows: usize, valid: usize, width: usize, tile: Tile) {
    let mut local = [0f32; ROWS * VECTORS * 16];
    for r in 0..rows {
        if !tile.first {
            std::ptr::copy_nonoverlapping(tile.c.add(r * tile.ldc), local.as_mut_ptr().add(r * width), valid);
        }
    }
    run_tile(cpu, rows, &Tile { c: local.as_mut_ptr(), ldc: width, ..tile });
    for r in 0..rows {
        std::ptr::copy_nonoverlapping(local.as_ptr().add(r * width), tile.c.add(r * tile.ldc), valid);
    }
}

/// One microkernel call's operands: `rows` rows × one panel (two vectors), `depth` input positions.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[derive(Clone, Copy)]
struct Tile {
    /// The first row's activations at the pass's first input position; rows `lda` apart. (Packing
    /// them tile by tile, as BLAS libraries do, measured no faster here: six streams prefetch well.)
    a: *const f32,
    lda: usize,
    /// The panel at the pass's first input position: `depth × width` weights, f32 or (`half`) f16.
    b: *const u8,
    half: bool,
    depth: usize,
    /// The output tile; rows `ldc` apart, two vectors wide.
    c: *mut f32,
    ldc: usize,
    /// The panel's bias, two vectors.
    bias: *const f32,
    /// First pass over `k`: start from the bias, not from the output.
    first: bool,
}

/// Runs the microkernel for `rows` (1–6) rows.
///
/// SAFETY: the tile's pointers must be valid for `rows` rows, two vectors of columns and `depth` inputs.
unsafe fn run_tile(cpu: Fma, rows: usize, tile: &Tile) {
    #[cfg(target_arch = "x86_64")]
    match cpu {
        Fma::Avx2(_) => x86::avx2(rows, tile),
        Fma::Avx512(_) => x86::avx512(rows, tile),
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (cpu, rows, tile);
        unreachable!("no CPU token exists off x86-64");
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Tile, VECTORS};
    use std::arch::x86_64::*;

    /// Eight f16 weights at `p`, widened to f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen_avx2(p: *const u16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    /// Sixteen f16 weights at `p`, widened to f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    unsafe fn widen_avx512(p: *const u16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }

    /// Defines the microkernel of one build and its dispatch on the row count: the same code for both
    /// builds, with the build's vector type and intrinsics.
    macro_rules! build {
        ($dispatch:ident, $kernel:ident, $features:literal, $zero:ident, $load:ident, $widen:ident,
         $store:ident, $splat:ident, $fma:ident, $lanes:literal) => {
            /// SAFETY: as `run_tile`; the caller's token proves the CPU has the build's features.
            pub(super) unsafe fn $dispatch(rows: usize, t: &Tile) {
                match (rows, t.half) {
                    (1, false) => $kernel::<1, false>(t),
                    (2, false) => $kernel::<2, false>(t),
                    (3, false) => $kernel::<3, false>(t),
                    (4, false) => $kernel::<4, false>(t),
                    (5, false) => $kernel::<5, false>(t),
                    (6, false) => $kernel::<6, false>(t),
                    (1, true) => $kernel::<1, true>(t),
                    (2, true) => $kernel::<2, true>(t),
                    (3, true) => $kernel::<3, true>(t),
                    (4, true) => $kernel::<4, true>(t),
                    (5, true) => $kernel::<5, true>(t),
                    (6, true) => $kernel::<6, true>(t),
                    _ => unreachable!("{rows} rows"),
                }
            }

            #[target_feature(enable = $features)]
            unsafe fn $kernel<const R: usize, const HALF: bool>(t: &Tile) {
                let mut acc = [[$zero(); VECTORS]; R];
                for (r, row) in acc.iter_mut().enumerate() {
                    let from = if t.first { t.bias } else { t.c.add(r * t.ldc) };
                    for (v, slot) in row.iter_mut().enumerate() {
                        *slot = $load(from.add(v * $lanes));
                    }
                }
                let (mut a, b) = (t.a, t.b);
                let (mut b, mut b16) = (b as *const f32, b as *const u16);
                for _ in 0..t.depth {
                    let mut w = [$zero(); VECTORS];
                    for (v, slot) in w.iter_mut().enumerate() {
                        *slot = if HALF { $widen(b16.add(v * $lanes)) } else { $load(b.add(v * $lanes)) };
                    }
                    for (r, row) in acc.iter_mut().enumerate() {
                        let x = $splat(*a.add(r * t.lda));
                        for (slot, w) in row.iter_mut().zip(&w) {
                            *slot = $fma(x, *w, *slot);
                        }
                    }
                    a = a.add(1);
                    b = b.add(VECTORS * $lanes);
                    b16 = b16.add(VECTORS * $lanes);
                }
                for (r, row) in acc.iter().enumerate() {
                    let c = t.c.add(r * t.ldc);
                    for (v, sum) in row.iter().enumerate() {
                        $store(c.add(v * $lanes), *sum);
                    }
                }
            }
        };
    }

    build!(
        avx2,
        kernel_avx2,
        "avx2,fma,f16c",
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        widen_avx2,
        _mm256_storeu_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        8
    );
    build!(
        avx512,
        kernel_avx512,
        "avx512f,avx512bw,avx512dq,avx512vl,fma",
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        widen_avx512,
        _mm512_storeu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        16
    );
}

/// What the kernel computes, in scalar code: `x · Wᵀ + b` for `x` of `[m, k]` and `weight` of `[n, k]`,
/// summed in f64; `bias` is `[n]` or empty. The portable reference the tests hold every build to.
pub fn reference(weight: &[f32], n: usize, k: usize, bias: &[f32], x: &[f32], m: usize) -> Vec<f32> {
    assert!(weight.len() == n * k && x.len() == m * k, "shapes");
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k).map(|p| x[i * k + p] as f64 * weight[j * k + p] as f64).sum();
            out[i * n + j] = (s + bias.get(j).copied().unwrap_or(0.0) as f64) as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::kernels::sample_values as values;
    use crate::engines::kernels::{Avx2, Avx512, STALE_BUILD};

    /// The build against the f64 reference, on shapes that cross every boundary: partial row tiles,
    /// partial panels and tasks, several passes over `k`, and `k = 0`.
    fn matches_the_reference(cpu: Fma) {
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 5, 0),
            (7, 70, 33),
            (13, 130, 64),
            (6, 64, 384),
            (27, 384, 384),
            (5, 200, 1537),
            (100, 17, 700),
        ] {
            // One shape without a bias.
            let b = if n == 17 { Vec::new() } else { values(n, 3) };
            let (x, w) = (values(m * k, 1), values(n * k, 2));
            let got = PackedF32::new(cpu, &w, n, k, &b).forward(&x, m);
            let want = reference(&w, n, k, &b, &x, m);
            assert_eq!(got.len(), m * n);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()) * (k as f32).sqrt(), "{m}×{n}×{k} at {i}: {g} vs {w}");
            }
        }
    }

    /// Weights that are exact halves give the same bits packed as f16 as packed as f32; others are
    /// refused.
    fn halves_give_the_same_bits(cpu: Fma) {
        for &(m, n, k) in &[(1, 70, 33), (5, 384, 384), (13, 130, 1537)] {
            let w: Vec<f32> = values(n * k, 2).iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
            let (x, b) = (values(m * k, 1), values(n, 3));
            let half = PackedF32::new_exact_f16(cpu, &w, n, k, &b).expect("exact halves");
            assert_eq!(half.forward(&x, m), PackedF32::new(cpu, &w, n, k, &b).forward(&x, m), "{m}×{n}×{k}");
        }
        let mut w: Vec<f32> = values(64, 2).iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        w[17] = 0.1;
        assert!(PackedF32::new_exact_f16(cpu, &w, 8, 8, &[]).is_none(), "0.1 is not a half");
    }

    /// A row's output is the same whether it is computed alone or among others.
    fn rows_are_independent(cpu: Fma) {
        let (n, k) = (100, 1000);
        let w = PackedF32::new(cpu, &values(n * k, 5), n, k, &values(n, 7));
        let x = values(200 * k, 6);
        let all = w.forward(&x, 200);
        for r in [0, 5, 6, 95, 96, 199] {
            assert_eq!(&all[r * n..(r + 1) * n], &w.forward(&x[r * k..(r + 1) * k], 1)[..], "row {r}");
        }
    }

    #[test]
    #[cfg_attr(not(sis_host_avx2), ignore = "needs AVX2 and FMA")]
    fn the_avx2_build_matches_the_reference() {
        let cpu = Fma::Avx2(Avx2::detect().expect(STALE_BUILD));
        matches_the_reference(cpu);
        rows_are_independent(cpu);
        halves_give_the_same_bits(cpu);
    }

    #[test]
    #[cfg_attr(not(sis_host_avx512), ignore = "needs AVX-512")]
    fn the_avx512_build_matches_the_reference() {
        let cpu = Fma::Avx512(Avx512::detect().expect(STALE_BUILD));
        matches_the_reference(cpu);
        rows_are_independent(cpu);
        halves_give_the_same_bits(cpu);
    }
}
