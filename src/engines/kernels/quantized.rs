//! An int8 dot-product GEMM for `x · Wᵀ` with GGUF-quantized weights, on AVX-512 VNNI (`vpdpbusd`).
//!
//! Decode steps are small matrix products (one row per active sequence) against weights read from
//! memory each step, so the kernel is built to read each weight block once for all rows of a step:
//! per group of 16 output columns and block of 32 inputs, the block's quants are unpacked into
//! registers once, then every row's activations (quantized to int8 per block of 32, like llama.cpp's
//! Q8_1) are multiplied in. Lanes are output columns, so no horizontal sums are needed.
//!
//! Every block is stored as `w = d·u + m` with unsigned quants `u`: Q4_1 is exactly that (4-bit `u`),
//! Q8_0 becomes `u = q + 128`, `m = −128·d`, and other types are dequantized and re-quantized to 8 bits
//! (asymmetric, per block of 32). Then `Σ w·x = d·dx·Σ u·q + m·sx` with `sx = dx·Σ q`, where `Σ u·q` is
//! exactly what `vpdpbusd` (u8 × i8) computes. A row's result does not depend on the other rows of the
//! call.
//!
//! The kernel needs AVX-512 VNNI: a [`PackedQuant`] is made from an [`Avx512Vnni`] token, so holding one
//! proves the CPU runs it. Its reference is candle's quantized matmul (what runs without it), and
//! [`reference`] is what the kernel computes, in scalar code: the tests hold the kernel to it.

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;
use rayon::prelude::*;

use super::{selection, Avx512Vnni, OutPtr};

/// Inputs per block.
const BLOCK: usize = 32;
/// Output columns per group (one vector of 16 lanes).
const COLS: usize = 16;
/// Rows per kernel call.
const ROWS: usize = 8;

/// Whether models run the kernel in this process: this CPU has it and `SIS_CPU_KERNELS` selects it.
pub fn supported() -> bool {
    selection().is_ok_and(|s| s.kernels().vnni.is_some())
}

/// Quant width of a packed matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bits {
    /// Two quants per byte: low nibbles hold inputs 0–15 of a block, high nibbles 16–31.
    Four,
    /// One quant per byte.
    Eight,
}

impl Bits {
    /// Bytes of quants per (group, block).
    fn bytes(self) -> usize {
        match self {
            Bits::Four => COLS * BLOCK / 2,
            Bits::Eight => COLS * BLOCK,
        }
    }
}

/// A `[n, k]` quantized weight laid out for the kernel.
pub struct PackedQuant {
    cpu: Avx512Vnni,
    n: usize,
    k: usize,
    blocks: usize,
    bits: Bits,
    /// Per (group, block): the quants of 16 columns × 32 inputs, four inputs of a column per lane.
    quants: Vec<u8>,
    /// Per (group, block): 16 scales `d` then 16 offsets `m`, as f16.
    scales: Vec<u16>,
}

impl PackedQuant {
    /// Packs a GGUF tensor of shape `[n, k]` (`k` a positive multiple of 32) for the kernel that `cpu`
    /// proves runs here; `None` for other shapes.
    pub fn from_qtensor(cpu: Avx512Vnni, tensor: &QTensor) -> candle_core::Result<Option<Self>> {
        let dims = tensor.shape().dims();
        let [n, k] = dims else { return Ok(None) };
        let (n, k) = (*n, *k);
        if k % BLOCK != 0 || n == 0 || k == 0 {
            return Ok(None);
        }
        let blocks = k / BLOCK;
        // Each column's blocks as (d, m, 32 unsigned quants).
        let mut columns: Vec<(f16, f16, [u8; BLOCK])> = Vec::with_capacity(n * blocks);
        let bits = match tensor.dtype() {
            GgmlDType::Q4_1 => {
                let data = tensor.data()?;
                for raw in data.chunks_exact(20).take(n * blocks) {
                    let mut u = [0u8; BLOCK];
                    for j in 0..16 {
                        u[j] = raw[4 + j] & 0x0f;
                        u[j + 16] = raw[4 + j] >> 4;
                    }
                    columns.push((half_at(raw, 0), half_at(raw, 2), u));
                }
                Bits::Four
            }
            GgmlDType::Q4_0 => {
                let data = tensor.data()?;
                for raw in data.chunks_exact(18).take(n * blocks) {
                    let d = half_at(raw, 0);
                    let mut u = [0u8; BLOCK];
                    for j in 0..16 {
                        u[j] = raw[2 + j] & 0x0f;
                        u[j + 16] = raw[2 + j] >> 4;
                    }
                    columns.push((d, f16::from_f32(-8.0 * d.to_f32()), u));
                }
                Bits::Four
            }
            GgmlDType::Q8_0 => {
                let data = tensor.data()?;
                for raw in data.chunks_exact(34).take(n * blocks) {
                    let d = half_at(raw, 0);
                    let mut u = [0u8; BLOCK];
                    for j in 0..BLOCK {
                        u[j] = (raw[2 + j] as i8 as i16 + 128) as u8;
                    }
                    columns.push((d, f16::from_f32(-128.0 * d.to_f32()), u));
                }
                Bits::Eight
            }
            _ => {
                let values = tensor.dequantize(&candle_core::Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
                for block in values.chunks_exact(BLOCK) {
                    columns.push(requantize(block));
                }
                Bits::Eight
            }
        };
        if columns.len() != n * blocks {
            candle_core::bail!("quantized tensor holds fewer blocks than its shape");
        }
        Ok(Some(Self::pack(cpu, &columns, n, k, bits)))
    }

    /// Quantizes an f32 `[n, k]` matrix (`k` a positive multiple of 32) to 8 bits per weight, for the
    /// kernel that `cpu` proves runs here.
    pub fn from_f32(cpu: Avx512Vnni, weight: &[f32], n: usize, k: usize) -> Self {
        assert!(
            k > 0 && k.is_multiple_of(BLOCK) && weight.len() == n * k,
            "weight is not [n, k] with k a positive multiple of 32"
        );
        let columns: Vec<_> = weight.chunks_exact(BLOCK).map(requantize).collect();
        Self::pack(cpu, &columns, n, k, Bits::Eight)
    }

    /// Lays out each column's blocks `(d, m, quants)` for the kernel.
    fn pack(cpu: Avx512Vnni, columns: &[(f16, f16, [u8; BLOCK])], n: usize, k: usize, bits: Bits) -> Self {
        let blocks = k / BLOCK;
        let groups = n.div_ceil(COLS);
        let mut quants = vec![0u8; groups * blocks * bits.bytes()];
        let mut scales = vec![0u16; groups * blocks * 2 * COLS];
        for g in 0..groups {
            for b in 0..blocks {
                let tile = &mut quants[(g * blocks + b) * bits.bytes()..][..bits.bytes()];
                let sc = &mut scales[(g * blocks + b) * 2 * COLS..][..2 * COLS];
                for lane in 0..COLS {
                    let col = g * COLS + lane;
                    let Some((d, m, u)) = columns.get(col * blocks + b).filter(|_| col < n) else { continue };
                    sc[lane] = d.to_bits();
                    sc[COLS + lane] = m.to_bits();
                    for (i, &q) in u.iter().enumerate() {
                        // Input i sits in vector i/4, lane `lane`, byte i%4.
                        let (vector, byte) = (i / 4, i % 4);
                        match bits {
                            Bits::Eight => tile[vector * 64 + lane * 4 + byte] = q,
                            Bits::Four => {
                                let (slot, shift) = if vector < 4 { (vector, 0) } else { (vector - 4, 4) };
                                tile[slot * 64 + lane * 4 + byte] |= q << shift;
                            }
                        }
                    }
                }
            }
        }
        Self { cpu, n, k, blocks, bits, quants, scales }
    }

    /// Output width.
    pub fn n(&self) -> usize {
        self.n
    }

    /// `x · Wᵀ` for `x` of `[m, k]` (row-major); returns `[m, n]`.
    pub fn forward(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.k, "input is not [m, k]");
        let blocks = self.blocks;
        let mut xq = vec![0i8; m * self.k];
        let mut dx = vec![0f32; m * blocks];
        let mut sx = vec![0f32; m * blocks];
        for (((row, q), d), s) in x
            .chunks_exact(self.k)
            .zip(xq.chunks_exact_mut(self.k))
            .zip(dx.chunks_exact_mut(blocks))
            .zip(sx.chunks_exact_mut(blocks))
        {
            quantize_row(row, q, d, s);
        }
        let groups = self.n.div_ceil(COLS);
        let mut out = vec![0f32; m * self.n];
        let out_ptr = OutPtr(out.as_mut_ptr());
        let per_task = groups.div_ceil(rayon::current_num_threads().max(1) * 4).max(1);
        let tasks = groups.div_ceil(per_task);
        let run = |task: usize| {
            let out_ptr = &out_ptr;
            for g in task * per_task..((task + 1) * per_task).min(groups) {
                let mut row = 0;
                while row < m {
                    let rows = (m - row).min(ROWS);
                    let tile = Tile {
                        quants: self.quants[g * blocks * self.bits.bytes()..].as_ptr(),
                        scales: self.scales[g * blocks * 2 * COLS..].as_ptr(),
                        blocks,
                        xq: xq[row * self.k..].as_ptr(),
                        k: self.k,
                        dx: dx[row * blocks..].as_ptr(),
                        sx: sx[row * blocks..].as_ptr(),
                        out: out_ptr.0.wrapping_add(row * self.n + g * COLS),
                        ldo: self.n,
                        cols: (self.n - g * COLS).min(COLS),
                    };
                    // SAFETY: the tile's pointers stay within the buffers above; each task writes its own
                    // columns of `out`.
                    unsafe { run_tile(self.cpu, rows, self.bits, &tile) };
                    row += rows;
                }
            }
        };
        if tasks == 1 {
            run(0);
        } else {
            (0..tasks).into_par_iter().for_each(run);
        }
        out
    }
}

fn half_at(raw: &[u8], at: usize) -> f16 {
    f16::from_bits(u16::from_le_bytes([raw[at], raw[at + 1]]))
}

/// An f32 block as 8-bit asymmetric quants.
fn requantize(block: &[f32]) -> (f16, f16, [u8; BLOCK]) {
    let min = block.iter().copied().fold(f32::INFINITY, f32::min);
    let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let m = f16::from_f32(min);
    let d = f16::from_f32(((max - m.to_f32()) / 255.0).max(0.0));
    let inv = if d.to_f32() > 0.0 { 1.0 / d.to_f32() } else { 0.0 };
    let mut u = [0u8; BLOCK];
    for (q, &w) in u.iter_mut().zip(block) {
        *q = ((w - m.to_f32()) * inv).round().clamp(0.0, 255.0) as u8;
    }
    (d, m, u)
}

/// One row of activations as int8 per block of 32: quants, scale `dx` and `sx = dx·Σq`.
fn quantize_row(row: &[f32], q: &mut [i8], dx: &mut [f32], sx: &mut [f32]) {
    for (b, (block, qb)) in row.chunks_exact(BLOCK).zip(q.chunks_exact_mut(BLOCK)).enumerate() {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (o, &v) in qb.iter_mut().zip(block) {
            let v = (v * inv).round() as i8;
            *o = v;
            sum += v as i32;
        }
        dx[b] = d;
        sx[b] = d * sum as f32;
    }
}

/// Runs the kernel on one tile.
///
/// SAFETY: the tile's pointers must be valid for `rows` rows, 16 columns and every block.
unsafe fn run_tile(cpu: Avx512Vnni, rows: usize, bits: Bits, tile: &Tile) {
    #[cfg(target_arch = "x86_64")]
    avx512::dispatch(cpu, rows, bits, tile);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (cpu, rows, bits, tile);
        unreachable!("no CPU token exists off x86-64");
    }
}

/// What the kernel computes, in scalar code: `x · Wᵀ` (`x` of `[m, k]`) with the weights of `tensor`
/// (`[n, k]`) dequantized and each row's activations rounded to int8 per block of 32, as the kernel
/// quantizes them, summed in f64. The portable reference the tests hold it to (for Q4_0, Q4_1 and Q8_0,
/// which the kernel runs as they are; other types it re-quantizes to 8 bits first).
pub fn reference(tensor: &QTensor, x: &[f32], m: usize) -> candle_core::Result<Vec<f32>> {
    let (n, k) = tensor.shape().dims2()?;
    if k % BLOCK != 0 || x.len() != m * k {
        candle_core::bail!("reference: x is not [m, k] with k a multiple of 32");
    }
    let w = tensor.dequantize(&candle_core::Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; m * n];
    for (row, out) in x.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
        let mut xr = vec![0f32; k];
        for (block, rounded) in row.chunks_exact(BLOCK).zip(xr.chunks_exact_mut(BLOCK)) {
            let d = block.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
            for (r, v) in rounded.iter_mut().zip(block) {
                *r = if d > 0.0 { (v / d).round() * d } else { 0.0 };
            }
        }
        for (c, o) in out.iter_mut().enumerate() {
            *o = (0..k).map(|i| w[c * k + i] as f64 * xr[i] as f64).sum::<f64>() as f32;
        }
    }
    Ok(out)
}

/// One kernel call: a group of 16 columns, up to eight rows, every block.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Tile {
    quants: *const u8,
    scales: *const u16,
    blocks: usize,
    xq: *const i8,
    k: usize,
    dx: *const f32,
    sx: *const f32,
    out: *mut f32,
    ldo: usize,
    cols: usize,
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Avx512Vnni, Bits, Tile, BLOCK, COLS};
    use std::arch::x86_64::*;

    /// SAFETY: as `run_tile`; the token is what makes the `#[target_feature]` calls sound.
    pub(super) unsafe fn dispatch(_: Avx512Vnni, rows: usize, bits: Bits, t: &Tile) {
        macro_rules! go {
            ($($r:literal),*) => {
                match (rows, bits) {
                    $(
                        ($r, Bits::Four) => kernel::<$r, true>(t),
                        ($r, Bits::Eight) => kernel::<$r, false>(t),
                    )*
                    _ => unreachable!("{rows} rows"),
                }
            };
        }
        go!(1, 2, 3, 4, 5, 6, 7, 8)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn kernel<const R: usize, const FOUR: bool>(t: &Tile) {
        let mut acc = [_mm512_setzero_ps(); R];
        let nibble = _mm512_set1_epi8(0x0f);
        let tile_bytes = if FOUR { COLS * BLOCK / 2 } else { COLS * BLOCK };
        for b in 0..t.blocks {
            let q = t.quants.add(b * tile_bytes);
            let mut w = [_mm512_setzero_si512(); 8];
            if FOUR {
                for i in 0..4 {
                    let v = _mm512_loadu_si512(q.add(i * 64) as *const __m512i);
                    w[i] = _mm512_and_si512(v, nibble);
                    w[i + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
                }
            } else {
                for (i, slot) in w.iter_mut().enumerate() {
                    *slot = _mm512_loadu_si512(q.add(i * 64) as *const __m512i);
                }
            }
            let sc = t.scales.add(b * 2 * COLS);
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(sc as *const __m256i));
            let m = _mm512_cvtph_ps(_mm256_loadu_si256(sc.add(COLS) as *const __m256i));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = t.xq.add(r * t.k + b * BLOCK) as *const i32;
                let mut sum = _mm512_setzero_si512();
                for (i, wv) in w.iter().enumerate() {
                    sum = _mm512_dpbusd_epi32(sum, *wv, _mm512_set1_epi32(x.add(i).read_unaligned()));
                }
                let blocks = t.blocks;
                let dx = _mm512_set1_ps(*t.dx.add(r * blocks + b));
                let sx = _mm512_set1_ps(*t.sx.add(r * blocks + b));
                *acc = _mm512_fmadd_ps(_mm512_mul_ps(d, dx), _mm512_cvtepi32_ps(sum), *acc);
                *acc = _mm512_fmadd_ps(m, sx, *acc);
            }
        }
        let mask: __mmask16 = if t.cols == 16 { 0xffff } else { (1u16 << t.cols) - 1 };
        for (r, acc) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(t.out.add(r * t.ldo), mask, *acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::kernels::STALE_BUILD;
    use candle_core::quantized::QMatMul;
    use candle_core::{Device, Module, Tensor};

    fn values(len: usize, seed: u32) -> Vec<f32> {
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

    fn quantize(dtype: GgmlDType, n: usize, k: usize, seed: u32) -> QTensor {
        let w = Tensor::from_vec(values(n * k, seed), (n, k), &Device::Cpu).unwrap();
        QTensor::quantize(&w, dtype).unwrap()
    }

    #[test]
    fn the_reference_agrees_with_candles_quantized_matmul() {
        // candle quantizes activations too (to Q8 blocks, like the kernel), so the two differ by rounding.
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let (m, n, k) = (3, 40, 128);
            let q = quantize(dtype, n, k, 7);
            let x = values(m * k, 9);
            let want = reference(&q, &x, m).unwrap();
            let xt = Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap();
            let got = QMatMul::from_qtensor(q).unwrap().forward(&xt).unwrap().flatten_all().unwrap();
            for (g, w) in got.to_vec1::<f32>().unwrap().iter().zip(&want) {
                assert!((g - w).abs() <= 2e-2 * (1.0 + w.abs()), "{dtype:?}: candle {g} vs reference {w}");
            }
        }
    }

    /// The kernel against the reference.
    fn check(cpu: Avx512Vnni, dtype: GgmlDType, m: usize, n: usize, k: usize) {
        let q = quantize(dtype, n, k, 7);
        let packed = PackedQuant::from_qtensor(cpu, &q).unwrap().expect("packable");
        let x = values(m * k, 9);
        let got = packed.forward(&x, m);
        let want = reference(&q, &x, m).unwrap();
        // Weights of other types are re-quantized to 8 bits: allow that rounding too.
        let tol = if matches!(dtype, GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q8_0) { 2e-3 } else { 0.1 };
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{dtype:?} {m}×{n}×{k} at {i}: {g} vs {w}");
        }
    }

    #[test]
    #[cfg_attr(not(sis_host_avx512vnni), ignore = "needs AVX-512 VNNI")]
    fn matches_the_reference() {
        let cpu = Avx512Vnni::detect().expect(STALE_BUILD);
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::F32] {
            for &(m, n, k) in &[(1, 16, 32), (3, 40, 64), (9, 100, 256), (8, 576, 576)] {
                if dtype == GgmlDType::Q4K && k % 256 != 0 {
                    continue;
                }
                check(cpu, dtype, m, n, k);
            }
        }
    }

    #[test]
    #[cfg_attr(not(sis_host_avx512vnni), ignore = "needs AVX-512 VNNI")]
    fn a_row_does_not_depend_on_its_neighbours() {
        let cpu = Avx512Vnni::detect().expect(STALE_BUILD);
        let (n, k) = (48, 128);
        let packed = PackedQuant::from_qtensor(cpu, &quantize(GgmlDType::Q4_1, n, k, 3)).unwrap().unwrap();
        let x = values(11 * k, 4);
        let all = packed.forward(&x, 11);
        for r in 0..11 {
            assert_eq!(&all[r * n..(r + 1) * n], &packed.forward(&x[r * k..(r + 1) * k], 1)[..]);
        }
    }
}
