//! A bf16 GEMM for `x · Wᵀ + b` on CPUs with AVX-512 BF16 (`vdpbf16ps`).
//!
//! A bf16 dot-product instruction does twice the multiply-adds of an f32 FMA, so on the CPUs we serve on
//! it doubles the ceiling of the dense layers (encoders are compute-bound). Weights are rounded to bf16
//! and laid out once at load ([`PackedBf16`]); activations are rounded per call; sums stay in f32. Each
//! output element is the same ordered sum over `k` whatever the number of rows in the call, so results
//! do not depend on batching.
//!
//! The kernel needs AVX-512 BF16: a [`PackedBf16`] is made from an [`Avx512Bf16`] token, so holding one
//! proves the CPU runs it. Its reference is candle's f32 matmul (what dense layers run without it), and
//! [`reference`] is what the kernel computes, in scalar code: the tests hold the kernel to it.
//!
//! Layout: output columns are grouped by 64 (four 16-lane vectors); within a group, for each pair of
//! input positions `(2p, 2p+1)`, the 64 columns' two bf16 values sit side by side, so the microkernel
//! reads one contiguous stream per group and broadcasts one activation pair per row.

use rayon::prelude::*;

use super::{Avx512Bf16, OutPtr};

/// Columns per group (four vectors of 16 f32 lanes).
const GROUP: usize = 64;
/// Rows per microkernel call.
const ROWS: usize = 6;
/// Input pairs per pass: a group's 64 columns × 96 pairs of bf16 (24 KiB) stay in L1 while every row
/// tile streams past them. Partial sums go through the output in f32, so the order of the additions,
/// and with it every result, is the same as in one pass.
const PAIRS_PER_PASS: usize = 96;
/// Rows per parallel task.
const ROWS_PER_TASK: usize = 96;

/// A `[n, k]` weight matrix (torch `Linear` layout) rounded to bf16 and packed for the kernel.
pub struct PackedBf16 {
    cpu: Avx512Bf16,
    n: usize,
    k: usize,
    pairs: usize,
    /// Per group: `pairs × vectors × 16` words, each holding two bf16 (low = even input position).
    data: Vec<u32>,
    bias: Vec<f32>,
}

/// Round-to-nearest-even bf16 bits of `x` (what `vcvtneps2bf16` does; NaN stays NaN).
#[inline(always)]
fn bf16_bits(x: f32) -> u32 {
    let bits = x.to_bits();
    if x.is_nan() {
        return (bits >> 16) | 0x40;
    }
    (bits + 0x7fff + ((bits >> 16) & 1)) >> 16
}

#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    bf16_bits(lo) | bf16_bits(hi) << 16
}

impl PackedBf16 {
    /// Packs `weight` (`[n, k]`, row-major) and `bias` (`[n]`, or empty for none) for the kernel that
    /// `cpu` proves runs here.
    pub fn new(cpu: Avx512Bf16, weight: &[f32], n: usize, k: usize, bias: &[f32]) -> Self {
        assert_eq!(weight.len(), n * k, "weight is not [n, k]");
        assert!(bias.is_empty() || bias.len() == n, "bias is not [n]");
        let pairs = k.div_ceil(2);
        let vectors_total = n.div_ceil(16);
        let mut data = vec![0u32; vectors_total * 16 * pairs];
        // Groups are contiguous runs of `data`: all but the last hold 64 columns.
        let pack_group = |(group, out): (usize, &mut [u32])| {
            let vectors = out.len() / (16 * pairs).max(1);
            for lane in 0..vectors * 16 {
                let col = group * GROUP + lane;
                if col >= n {
                    break;
                }
                let row = &weight[col * k..(col + 1) * k];
                let mut it = row.chunks_exact(2);
                for (p, two) in (&mut it).enumerate() {
                    out[p * vectors * 16 + lane] = pair(two[0], two[1]);
                }
                if let [last] = it.remainder() {
                    out[(pairs - 1) * vectors * 16 + lane] = pair(*last, 0.0);
                }
            }
        };
        let chunk = GROUP * pairs;
        if n * k >= 1 << 18 {
            data.par_chunks_mut(chunk.max(1)).enumerate().for_each(pack_group);
        } else {
            data.chunks_mut(chunk.max(1)).enumerate().for_each(pack_group);
        }
        let bias = if bias.is_empty() { vec![0.0; n] } else { bias.to_vec() };
        Self { cpu, n, k, pairs, data, bias }
    }

    /// Output width.
    pub fn n(&self) -> usize {
        self.n
    }

    /// `x · Wᵀ + b` for `x` of `[m, k]` (row-major); returns `[m, n]`.
    pub fn forward(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.k, "input is not [m, k]");
        let pairs = self.pairs;
        // The rounded activations go in this thread's scratch buffer, taken out for the call (not
        // borrowed): while this call waits on its tasks, rayon may run another call on this thread.
        let mut a = SCRATCH.with(|scratch| std::mem::take(&mut *scratch.borrow_mut()));
        a.clear();
        a.resize(m * pairs, 0);
        // Round the activations once: row r, pair p → (x[r][2p], x[r][2p+1]).
        let cpu = self.cpu;
        if m * self.k < 1 << 16 {
            x.chunks(self.k.max(1)).zip(a.chunks_mut(pairs.max(1))).for_each(|(row, out)| round_row(cpu, row, out));
        } else {
            a.par_chunks_mut(pairs.max(1))
                .zip(x.par_chunks(self.k.max(1)))
                .for_each(|(out, row)| round_row(cpu, row, out));
        }
        let len = m * self.n;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let groups = self.n.div_ceil(GROUP);
        let row_blocks = m.div_ceil(ROWS_PER_TASK);
        let out_ptr = OutPtr(out.spare_capacity_mut().as_mut_ptr() as *mut f32);
        let rounded: &[u32] = &a;
        // Tasks are (column group, block of rows): enough of them to keep both cores busy whatever the
        // shape, each reading its group's panel once per pass.
        (0..groups * row_blocks).into_par_iter().for_each(|task| {
            let out_ptr = &out_ptr;
            let (group, block) = (task / row_blocks, task % row_blocks);
            let rows = block * ROWS_PER_TASK..((block + 1) * ROWS_PER_TASK).min(m);
            // SAFETY: `out` has room for `[m, n]`; each task writes only its own rows × columns of it.
            unsafe { self.group(rounded, rows, group, out_ptr.0) }
        });
        // SAFETY: the tasks above wrote every one of the `len` elements: every (column group, row block)
        // pair is a task, and each task makes at least one pass (`group`) that stores every valid column
        // of each of its rows.
        unsafe { out.set_len(len) };
        SCRATCH.with(|scratch| *scratch.borrow_mut() = a);
        out
    }

    /// One column group for every row of `rows`: passes over blocks of `k`, at least one (for `k = 0`
    /// it stores the bias), so every output element of the group is written.
    ///
    /// SAFETY: `out` must hold `[m, n]` f32 for every row of `a`, and `rows` be within `m`.
    unsafe fn group(&self, a: &[u32], rows: std::ops::Range<usize>, group: usize, out: *mut f32) {
        let first_vector = group * GROUP / 16;
        let vectors = (self.n.div_ceil(16) - first_vector).min(GROUP / 16);
        let panel = self.data.as_ptr().add(first_vector * 16 * self.pairs);
        let col0 = group * GROUP;
        let cols = (self.n - col0).min(GROUP);
        let mut first_pair = 0;
        loop {
            let pairs = (self.pairs - first_pair).min(PAIRS_PER_PASS);
            let mut row = rows.start;
            while row < rows.end {
                let rows = (rows.end - row).min(ROWS);
                let tile = Tile {
                    a: a.as_ptr().add(row * self.pairs + first_pair),
                    lda: self.pairs,
                    pairs,
                    b: panel.add(first_pair * vectors * 16),
                    c: out.add(row * self.n + col0),
                    ldc: self.n,
                    bias: self.bias.as_ptr().add(col0),
                    cols,
                    first: first_pair == 0,
                    last: first_pair + pairs == self.pairs,
                };
                run_tile(self.cpu, rows, vectors, &tile);
                row += rows;
            }
            first_pair += pairs;
            if first_pair >= self.pairs {
                break;
            }
        }
    }
}

thread_local! {
    /// A buffer for the rounded activations, reused from call to call on each thread.
    static SCRATCH: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Rounds one row of `k` activations into `k/2` (rounded up) bf16 pairs.
fn round_row(cpu: Avx512Bf16, row: &[f32], out: &mut [u32]) {
    assert!(out.len() >= row.len().div_ceil(2), "no room for the rounded row");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the token proves the CPU has AVX-512 F and BF16; `out` holds at least `row.len() / 2`
    // words (asserted).
    let done = unsafe { avx512::round(cpu, row, out) };
    #[cfg(not(target_arch = "x86_64"))]
    let done = {
        let _ = cpu;
        0
    };
    for (p, o) in out.iter_mut().enumerate().skip(done / 2) {
        *o = pair(row.get(2 * p).copied().unwrap_or(0.0), row.get(2 * p + 1).copied().unwrap_or(0.0));
    }
}

/// Runs the microkernel on one tile.
///
/// SAFETY: the tile's pointers must be valid for `rows` rows of `vectors` × 16 columns and its pairs.
unsafe fn run_tile(cpu: Avx512Bf16, rows: usize, vectors: usize, tile: &Tile) {
    #[cfg(target_arch = "x86_64")]
    avx512::dispatch(cpu, rows, vectors, tile);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (cpu, rows, vectors, tile);
        unreachable!("no CPU token exists off x86-64");
    }
}

/// One microkernel call's operands.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Tile {
    a: *const u32,
    lda: usize,
    pairs: usize,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    bias: *const f32,
    /// Valid columns in this group (≤ 64); the rest are padding.
    cols: usize,
    /// First pass over `k`: start from zero, not from the output.
    first: bool,
    /// Last pass: add the bias.
    last: bool,
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Avx512Bf16, Tile};
    use std::arch::x86_64::*;

    /// SAFETY: as `run_tile`; the token is what makes the `#[target_feature]` calls sound.
    pub(super) unsafe fn dispatch(_: Avx512Bf16, rows: usize, vectors: usize, t: &Tile) {
        macro_rules! go {
            ($($r:literal),*) => {
                match (rows, vectors) {
                    $(
                        ($r, 4) => kernel::<$r, 4>(t),
                        ($r, 3) => kernel::<$r, 3>(t),
                        ($r, 2) => kernel::<$r, 2>(t),
                        ($r, 1) => kernel::<$r, 1>(t),
                    )*
                    _ => unreachable!("tile {rows}×{vectors}"),
                }
            };
        }
        go!(1, 2, 3, 4, 5, 6)
    }

    /// Rounds whole 16-value chunks of `row` to bf16 into `out`; returns how many values it did.
    ///
    /// SAFETY: `out` must hold `row.len() / 2` words.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn round(_: Avx512Bf16, row: &[f32], out: &mut [u32]) -> usize {
        let chunks = row.len() / 16;
        for c in 0..chunks {
            let v = _mm512_loadu_ps(row.as_ptr().add(c * 16));
            let h = _mm512_cvtneps_pbh(v);
            _mm256_storeu_si256(
                out.as_mut_ptr().add(c * 8) as *mut __m256i,
                std::mem::transmute::<__m256bh, __m256i>(h),
            );
        }
        chunks * 16
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn kernel<const R: usize, const V: usize>(t: &Tile) {
        let mask = |v: usize| -> __mmask16 {
            let valid = t.cols.saturating_sub(v * 16).min(16);
            if valid == 16 {
                0xffff
            } else {
                (1u16 << valid) - 1
            }
        };
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        if !t.first {
            for (r, row) in acc.iter_mut().enumerate() {
                for (v, slot) in row.iter_mut().enumerate() {
                    *slot = _mm512_maskz_loadu_ps(mask(v), t.c.add(r * t.ldc + v * 16));
                }
            }
        }
        for p in 0..t.pairs {
            let b = t.b.add(p * V * 16);
            let mut bv = [_mm512_setzero_si512(); V];
            for (v, slot) in bv.iter_mut().enumerate() {
                *slot = _mm512_loadu_si512(b.add(v * 16) as *const __m512i);
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_epi32(*t.a.add(r * t.lda + p) as i32);
                for (v, slot) in row.iter_mut().enumerate() {
                    *slot = _mm512_dpbf16_ps(
                        *slot,
                        std::mem::transmute::<__m512i, __m512bh>(a),
                        std::mem::transmute::<__m512i, __m512bh>(bv[v]),
                    );
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            let c = t.c.add(r * t.ldc);
            for (v, sum) in row.iter().enumerate() {
                let m = mask(v);
                let sum = if t.last { _mm512_add_ps(*sum, _mm512_maskz_loadu_ps(m, t.bias.add(v * 16))) } else { *sum };
                _mm512_mask_storeu_ps(c.add(v * 16), m, sum);
            }
        }
    }
}

/// What the kernel computes, in scalar code: `x · Wᵀ + b` over bf16-rounded `x` (`[m, k]`) and `weight`
/// (`[n, k]`), summed in f64; `bias` is `[n]` or empty. The portable reference the tests hold it to.
pub fn reference(weight: &[f32], n: usize, k: usize, bias: &[f32], x: &[f32], m: usize) -> Vec<f32> {
    assert!(weight.len() == n * k && x.len() == m * k, "shapes");
    let r = |v: f32| half::bf16::from_f32(v).to_f32() as f64;
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k).map(|p| r(x[i * k + p]) * r(weight[j * k + p])).sum();
            out[i * n + j] = (s + bias.get(j).copied().unwrap_or(0.0) as f64) as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::kernels::sample_values as values;
    use crate::engines::kernels::STALE_BUILD;

    #[test]
    fn the_reference_is_the_f32_product_to_within_bf16_rounding() {
        // The reference path of dense layers (an f32 product) against this module's bf16 reference.
        let (m, n, k) = (5, 70, 200);
        let (x, w, b) = (values(m * k, 1), values(n * k, 2), values(n, 3));
        let got = reference(&w, n, k, &b, &x, m);
        for i in 0..m {
            for j in 0..n {
                let exact: f64 = (0..k).map(|p| x[i * k + p] as f64 * w[j * k + p] as f64).sum::<f64>() + b[j] as f64;
                // Each product is off by at most 2⁻⁸ relative: k/2⁸ in all for |x|, |w| ≤ 1.
                let g = got[i * n + j] as f64;
                assert!((g - exact).abs() <= k as f64 / 256.0, "[{i},{j}]: {g} vs {exact}");
            }
        }
        assert_eq!(bf16_bits(1.0), 0x3f80);
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80, "ties to even");
        assert_eq!(bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82, "ties to even");
    }

    #[test]
    #[cfg_attr(not(sis_host_avx512bf16), ignore = "needs AVX-512 BF16")]
    fn matches_a_bf16_reference_for_odd_shapes() {
        let cpu = Avx512Bf16::detect().expect(STALE_BUILD);
        for &(m, n, k) in
            &[(1, 1, 1), (3, 5, 0), (7, 70, 33), (13, 130, 64), (6, 64, 384), (27, 384, 384), (5, 200, 1537)]
        {
            let x = values(m * k, 1);
            let w = values(n * k, 2);
            let b = values(n, 3);
            let got = PackedBf16::new(cpu, &w, n, k, &b).forward(&x, m);
            let want = reference(&w, n, k, &b, &x, m);
            assert_eq!(got.len(), m * n);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-3 * (1.0 + w.abs()), "{m}×{n}×{k} at {i}: {g} vs {w}");
            }
        }
    }

    #[test]
    #[cfg_attr(not(sis_host_avx512bf16), ignore = "needs AVX-512 BF16")]
    fn a_row_does_not_depend_on_its_neighbours() {
        let cpu = Avx512Bf16::detect().expect(STALE_BUILD);
        let (n, k) = (100, 96);
        let w = PackedBf16::new(cpu, &values(n * k, 5), n, k, &[]);
        let x = values(11 * k, 6);
        let all = w.forward(&x, 11);
        for r in 0..11 {
            let alone = w.forward(&x[r * k..(r + 1) * k], 1);
            assert_eq!(&all[r * n..(r + 1) * n], &alone[..]);
        }
    }
}
