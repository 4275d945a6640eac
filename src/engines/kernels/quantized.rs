//! An int8 dot-product GEMM for `x · Wᵀ` with GGUF-quantized weights, in two builds: AVX2
//! (`vpmaddubsw`) and AVX-512 VNNI (`vpdpbusd`).
//!
//! Decode steps are small matrix products (one row per active sequence) against weights read from
//! memory each step, so the kernel is built to read each weight block once for all rows of a step:
//! per group of 16 output columns and block of 32 inputs, the block's quants are unpacked into
//! registers once, then every row's activations (quantized to int8 per block of 32, like llama.cpp's
//! Q8_1) are multiplied in. Lanes are output columns, so no horizontal sums are needed.
//!
//! Every block is stored as `w = d·u + m` with unsigned quants `u`, read at their own width: Q4_0,
//! Q4_1 and Q4_K as 4-bit `u`; Q5_0, Q5_1 and Q5_K as 5-bit `u` (a nibble and a bit plane; the
//! AVX-512 build reads them as bytes); Q8_0 (`u = q + 128`) as 8-bit `u` ([`native`]).
//! Other types are dequantized and re-quantized to 8 bits (asymmetric, per block of 32). Then
//! `Σ w·x = d·dx·Σ u·q + m·sx` with `sx = dx·Σ q`, where `Σ u·q` (u8 × i8) is computed exactly in
//! integers by both builds, which then do the same f32 operations: the builds give the same bits. A
//! row's result does not depend on the other rows of the call.
//!
//! A [`PackedQuant`] is made from an [`Int8`] token, so holding one proves the CPU runs its build. Its
//! reference is candle's quantized matmul (what runs without it), and [`reference`] is what the kernel
//! computes, in scalar code: the tests hold the kernel to it.

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::Avx512Vnni;
use super::{selection, Avx2, Int8, OutPtr};

/// Inputs per block.
const BLOCK: usize = 32;
/// Output columns per group (one vector of 16 lanes).
const COLS: usize = 16;
/// Rows per kernel call.
const ROWS: usize = 8;
/// Inputs per K-quant super-block (eight blocks).
const SUPER: usize = 256;

/// Whether models run the kernel in this process: this CPU has a build of it and `SIS_CPU_KERNELS`
/// selects it.
pub fn supported() -> bool {
    selection().is_ok_and(|s| s.kernels().int8.is_some())
}

/// Whether the kernel packs matrices of this type as they are, at their own width (other types are
/// dequantized and re-quantized to 8 bits per weight).
pub fn native(dtype: GgmlDType) -> bool {
    matches!(
        dtype,
        GgmlDType::Q4_0
            | GgmlDType::Q4_1
            | GgmlDType::Q5_0
            | GgmlDType::Q5_1
            | GgmlDType::Q8_0
            | GgmlDType::Q4K
            | GgmlDType::Q5K
    )
}

/// Quant width of a packed matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bits {
    /// Two quants per byte: low nibbles hold inputs 0–15 of a block, high nibbles 16–31.
    Four,
    /// 5-bit quants (the AVX2 build): their low four bits as [`Bits::Four`], then one byte per (column,
    /// input within a group of four) whose bit `v` is the fifth bit of input `4v + byte`. Five bits and
    /// a byte of scales per weight (Q5_0 and Q5_1 files are 5.5 and 6) where eight-bit quants take nine:
    /// a third less to read per step, for the types that most of a Q4_K_M file of a model whose width
    /// is no multiple of 256 is made of.
    Five,
    /// One quant per byte.
    Eight,
}

impl Bits {
    /// Bytes of quants per (group, block).
    fn bytes(self) -> usize {
        match self {
            Bits::Four => COLS * BLOCK / 2,
            Bits::Five => COLS * BLOCK / 2 + COLS * BLOCK / 8,
            Bits::Eight => COLS * BLOCK,
        }
    }
}

/// One block of 32 weights as `w = d·u + m`: `d`, `m` and the unsigned quants `u`.
type Block = (f16, f16, [u8; BLOCK]);

/// A `[n, k]` quantized weight laid out for the kernel.
pub struct PackedQuant {
    cpu: Int8,
    n: usize,
    k: usize,
    blocks: usize,
    bits: Bits,
    /// Eight-bit quants that all fit in five bits (the Q5 types): the AVX2 build sums their products
    /// in 16 bits, which wider quants would overflow.
    narrow: bool,
    /// Per (group, block): the quants of 16 columns × 32 inputs, four inputs of a column per lane.
    quants: Vec<u8>,
    /// Per (group, block): 16 scales `d` then 16 offsets `m`, as f16.
    scales: Vec<u16>,
}

impl PackedQuant {
    /// Packs a GGUF tensor of shape `[n, k]` (`k` a positive multiple of 32) for the kernel build `cpu`
    /// (which proves it runs here); `None` for other shapes.
    pub fn from_qtensor(cpu: Int8, tensor: &QTensor) -> candle_core::Result<Option<Self>> {
        let dims = tensor.shape().dims();
        let [n, k] = dims else { return Ok(None) };
        let (n, k) = (*n, *k);
        if k % BLOCK != 0 || n == 0 || k == 0 {
            return Ok(None);
        }
        let blocks = k / BLOCK;
        let (bits, mut columns) = match native(tensor.dtype()) {
            true => unpack(tensor.dtype(), &tensor.data()?).expect("native types unpack"),
            false => {
                let values = tensor.dequantize(&candle_core::Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
                (Bits::Eight, values.chunks_exact(BLOCK).map(requantize).collect())
            }
        };
        if columns.len() < n * blocks {
            candle_core::bail!("quantized tensor holds fewer blocks than its shape");
        }
        columns.truncate(n * blocks);
        Ok(Some(Self::pack(cpu, &columns, n, k, bits)))
    }

    /// Quantizes an f32 `[n, k]` matrix (`k` a positive multiple of 32) to 8 bits per weight, for the
    /// kernel build `cpu`.
    pub fn from_f32(cpu: Int8, weight: &[f32], n: usize, k: usize) -> Self {
        assert!(
            k > 0 && k.is_multiple_of(BLOCK) && weight.len() == n * k,
            "weight is not [n, k] with k a positive multiple of 32"
        );
        let columns: Vec<_> = weight.chunks_exact(BLOCK).map(requantize).collect();
        Self::pack(cpu, &columns, n, k, Bits::Eight)
    }

    /// Lays out each column's blocks `(d, m, quants)` for the kernel.
    fn pack(cpu: Int8, columns: &[Block], n: usize, k: usize, bits: Bits) -> Self {
        let blocks = k / BLOCK;
        let narrow = bits == Bits::Eight && columns.iter().all(|(_, _, u)| u.iter().all(|&q| q < 32));
        // 5-bit quants take the five-bit layout where the AVX2 build runs them (the AVX-512 build reads
        // them as bytes).
        let bits = if narrow && matches!(cpu, Int8::Avx2(_)) { Bits::Five } else { bits };
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
                            Bits::Four | Bits::Five => {
                                let (slot, shift) = if vector < 4 { (vector, 0) } else { (vector - 4, 4) };
                                tile[slot * 64 + lane * 4 + byte] |= (q & 0x0f) << shift;
                                if bits == Bits::Five {
                                    tile[4 * 64 + lane * 4 + byte] |= (q >> 4) << vector;
                                }
                            }
                        }
                    }
                }
            }
        }
        Self { cpu, n, k, blocks, bits, narrow, quants, scales }
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
        let mut xsum = vec![0i32; m * blocks];
        // Every AVX-512 CPU has AVX2, and the AVX2 loop gives the scalar loop's bits.
        let avx2 = match self.cpu {
            Int8::Avx2(avx2) => Some(avx2),
            Int8::Vnni(_) => Avx2::detect(),
        };
        let quantize = |((((row, q), d), s), t)| quantize_row(avx2, row, q, d, s, t);
        // Rows are quantized on their own, so splitting them over threads changes no bits.
        if m >= ROWS && rayon::current_num_threads() > 1 {
            x.par_chunks_exact(self.k)
                .zip(xq.par_chunks_exact_mut(self.k))
                .zip(dx.par_chunks_exact_mut(blocks))
                .zip(sx.par_chunks_exact_mut(blocks))
                .zip(xsum.par_chunks_exact_mut(blocks))
                .for_each(quantize);
        } else {
            x.chunks_exact(self.k)
                .zip(xq.chunks_exact_mut(self.k))
                .zip(dx.chunks_exact_mut(blocks))
                .zip(sx.chunks_exact_mut(blocks))
                .zip(xsum.chunks_exact_mut(blocks))
                .for_each(quantize);
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
                        xsum: xsum[row * blocks..].as_ptr(),
                        out: out_ptr.0.wrapping_add(row * self.n + g * COLS),
                        ldo: self.n,
                        cols: (self.n - g * COLS).min(COLS),
                    };
                    // SAFETY: the tile's pointers stay within the buffers above; each task writes its own
                    // columns of `out`.
                    unsafe { run_tile(self.cpu, rows, self.bits, self.narrow, &tile) };
                    row += rows;
                }
            }
        };
        if tasks == 1 || rayon::current_num_threads() == 1 {
            (0..tasks).for_each(run);
        } else {
            (0..tasks).into_par_iter().for_each(run);
        }
        out
    }
}

fn half_at(raw: &[u8], at: usize) -> f16 {
    f16::from_bits(u16::from_le_bytes([raw[at], raw[at + 1]]))
}

/// The blocks of a tensor's raw GGUF data as `w = d·u + m`, with the quants' width, for the types the
/// kernel takes as they are ([`native`]); `None` for other types.
fn unpack(dtype: GgmlDType, data: &[u8]) -> Option<(Bits, Vec<Block>)> {
    let mut out = Vec::new();
    let bits = match dtype {
        // d f16, 16 bytes of nibbles: w = d·(q − 8).
        GgmlDType::Q4_0 => {
            for raw in data.chunks_exact(18) {
                let d = half_at(raw, 0);
                out.push((d, f16::from_f32(-8.0 * d.to_f32()), nibbles(&raw[2..18])));
            }
            Bits::Four
        }
        // d, m f16, 16 bytes of nibbles: w = d·q + m.
        GgmlDType::Q4_1 => {
            for raw in data.chunks_exact(20) {
                out.push((half_at(raw, 0), half_at(raw, 2), nibbles(&raw[4..20])));
            }
            Bits::Four
        }
        // d f16, 32 fifth bits, 16 bytes of nibbles: w = d·(q − 16).
        GgmlDType::Q5_0 => {
            for raw in data.chunks_exact(22) {
                let d = half_at(raw, 0);
                out.push((d, f16::from_f32(-16.0 * d.to_f32()), fives(&raw[2..6], &raw[6..22])));
            }
            Bits::Eight
        }
        // d, m f16, 32 fifth bits, 16 bytes of nibbles: w = d·q + m.
        GgmlDType::Q5_1 => {
            for raw in data.chunks_exact(24) {
                out.push((half_at(raw, 0), half_at(raw, 2), fives(&raw[4..8], &raw[8..24])));
            }
            Bits::Eight
        }
        // d f16, 32 signed bytes: w = d·q = d·(q + 128) − 128·d.
        GgmlDType::Q8_0 => {
            for raw in data.chunks_exact(34) {
                let d = half_at(raw, 0);
                let u = std::array::from_fn(|i| (raw[2 + i] as i8 as i16 + 128) as u8);
                out.push((d, f16::from_f32(-128.0 * d.to_f32()), u));
            }
            Bits::Eight
        }
        // Super-blocks of 256: d, dmin f16, twelve bytes of 6-bit scales and mins, 128 bytes of
        // nibbles (block j: byte 32·(j/2) + i, low nibble for even j); w = d·sc·q − dmin·mn.
        GgmlDType::Q4K => {
            for raw in data.chunks_exact(144) {
                let (scales, qs) = (&raw[4..16], &raw[16..144]);
                for j in 0..SUPER / BLOCK {
                    let (d, m) = k_scales(raw, scales, j);
                    let q = &qs[32 * (j / 2)..][..32];
                    let shift = 4 * (j % 2);
                    out.push((d, m, std::array::from_fn(|i| (q[i] >> shift) & 0x0f)));
                }
            }
            Bits::Four
        }
        // As Q4_K, with 32 bytes of fifth bits before the nibbles (input i of block j: bit j of byte i).
        GgmlDType::Q5K => {
            for raw in data.chunks_exact(176) {
                let (scales, qh, qs) = (&raw[4..16], &raw[16..48], &raw[48..176]);
                for j in 0..SUPER / BLOCK {
                    let (d, m) = k_scales(raw, scales, j);
                    let q = &qs[32 * (j / 2)..][..32];
                    let shift = 4 * (j % 2);
                    out.push((d, m, std::array::from_fn(|i| ((q[i] >> shift) & 0x0f) | (((qh[i] >> j) & 1) << 4))));
                }
            }
            Bits::Eight
        }
        _ => return None,
    };
    Some((bits, out))
}

/// 16 bytes of nibbles as 32 quants: low nibbles are inputs 0–15, high nibbles 16–31.
fn nibbles(qs: &[u8]) -> [u8; BLOCK] {
    std::array::from_fn(|i| if i < 16 { qs[i] & 0x0f } else { qs[i - 16] >> 4 })
}

/// Q5_0 / Q5_1 quants: nibbles as [`nibbles`], the fifth bit of input i is bit i of `qh` (little-endian).
fn fives(qh: &[u8], qs: &[u8]) -> [u8; BLOCK] {
    let high = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let low = nibbles(qs);
    std::array::from_fn(|i| low[i] | ((((high >> i) & 1) as u8) << 4))
}

/// Block `j`'s `(d·sc, −dmin·mn)` of a Q4_K / Q5_K super-block (`raw` starts with d and dmin), as f16.
fn k_scales(raw: &[u8], scales: &[u8], j: usize) -> (f16, f16) {
    // Blocks 0–3: the low six bits of bytes j and j+4; blocks 4–7: a nibble of byte j+4 and the top two
    // bits of bytes j−4 (scale) and j (min).
    let (sc, mn) = if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        ((scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4), (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4))
    };
    let (d, dmin) = (half_at(raw, 0).to_f32(), half_at(raw, 2).to_f32());
    (f16::from_f32(d * sc as f32), f16::from_f32(-(dmin * mn as f32)))
}

/// An f32 block as 8-bit asymmetric quants.
fn requantize(block: &[f32]) -> Block {
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

/// One row of activations as int8 per block of 32: quants, scale `dx`, `sx = dx·Σq` and `Σq`, with the
/// AVX2 loop where `avx2` proves it runs (the same bits as the scalar loop).
fn quantize_row(avx2: Option<Avx2>, row: &[f32], q: &mut [i8], dx: &mut [f32], sx: &mut [f32], sums: &mut [i32]) {
    match avx2 {
        #[cfg(target_arch = "x86_64")]
        Some(cpu) => avx2::quantize_row(cpu, row, q, dx, sx, sums),
        _ => quantize_row_scalar(row, q, dx, sx, sums),
    }
}

/// [`quantize_row`] in scalar code.
fn quantize_row_scalar(row: &[f32], q: &mut [i8], dx: &mut [f32], sx: &mut [f32], sums: &mut [i32]) {
    for (b, (block, qb)) in row.chunks_exact(BLOCK).zip(q.chunks_exact_mut(BLOCK)).enumerate() {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (o, &v) in qb.iter_mut().zip(block) {
            // ±127 at most, even where `inv` overflows (tiny blocks): the AVX2 build needs −128 unused.
            let v = (v * inv).round().clamp(-127.0, 127.0) as i8;
            *o = v;
            sum += v as i32;
        }
        dx[b] = d;
        sx[b] = d * sum as f32;
        sums[b] = sum;
    }
}

/// Runs the kernel build `cpu` on one tile.
///
/// SAFETY: the tile's pointers must be valid for `rows` rows, 16 columns and every block.
unsafe fn run_tile(cpu: Int8, rows: usize, bits: Bits, narrow: bool, tile: &Tile) {
    #[cfg(target_arch = "x86_64")]
    match cpu {
        Int8::Avx2(cpu) => avx2::dispatch(cpu, rows, bits, narrow, tile),
        Int8::Vnni(cpu) => avx512::dispatch(cpu, rows, bits, tile),
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (cpu, rows, bits, narrow, tile);
        unreachable!("no CPU token exists off x86-64");
    }
}

/// What the kernel computes, in scalar code: `x · Wᵀ` (`x` of `[m, k]`) with the weights of `tensor`
/// (`[n, k]`) dequantized and each row's activations rounded to int8 per block of 32, as the kernel
/// quantizes them, summed in f64. The portable reference the tests hold it to: exact but for f32 sums
/// and f16 scales for the types the kernel runs as they are ([`native`]); it re-quantizes other types
/// to 8 bits first.
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
            // As the kernel rounds: times the inverse scale (dividing rounds differently at some halves).
            let d = block.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            for (r, v) in rounded.iter_mut().zip(block) {
                *r = (v * inv).round() * d;
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
    /// Per row and block: `Σq` of the activations (the AVX2 build's 8-bit path needs it).
    xsum: *const i32,
    out: *mut f32,
    ldo: usize,
    cols: usize,
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Avx2, Bits, Tile, BLOCK, COLS};
    use std::arch::x86_64::*;

    // How the quants are read: 4-bit, 5-bit (as [`Bits::Five`], or as bytes below 32), or any 8-bit.
    const FOUR: u8 = 0;
    const FIVE: u8 = 1;
    const EIGHT: u8 = 2;
    const FIVE_PLANES: u8 = 3;

    /// SAFETY: as `run_tile`; the token is what makes the `#[target_feature]` calls sound.
    pub(super) unsafe fn dispatch(_: Avx2, rows: usize, bits: Bits, narrow: bool, t: &Tile) {
        macro_rules! go {
            ($($r:literal),*) => {
                match (rows, bits, narrow) {
                    $(
                        ($r, Bits::Four, _) => kernel::<$r, FOUR>(t),
                        ($r, Bits::Five, _) => kernel::<$r, FIVE_PLANES>(t),
                        ($r, Bits::Eight, true) => kernel::<$r, FIVE>(t),
                        ($r, Bits::Eight, false) => kernel::<$r, EIGHT>(t),
                    )*
                    _ => unreachable!("{rows} rows"),
                }
            };
        }
        go!(1, 2, 3, 4, 5, 6, 7, 8)
    }

    /// The AVX-512 kernel's tile in two halves of eight lanes (columns 0–7 and 8–15 of the group): each
    /// 64-byte vector of quants is two 32-byte halves.
    ///
    /// `vpmaddubsw` multiplies u8 × i8 into i16 pairs, which saturate past 32767. A 4-bit pair is at most
    /// 2·15·127 = 3810, so all eight vectors of a block sum in i16 (30480); a 5-bit pair is at most
    /// 2·31·127 = 7874, so four do (31496). 8-bit quants are taken as `q = u − 128`, multiplied as
    /// `|q| · (x·sign q)` (at most 2·128·127 = 32512 a pair), each widened to i32 on its own, and
    /// `Σu·x = Σq·x + 128·Σx`. Every sum is exact, so the f32 steps see `vpdpbusd`'s integers.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn kernel<const R: usize, const W: u8>(t: &Tile) {
        let nibble = _mm256_set1_epi8(0x0f);
        let flip = _mm256_set1_epi8(-128);
        let ones = _mm256_set1_epi16(1);
        let tile_bytes = match W {
            FOUR => Bits::Four.bytes(),
            FIVE_PLANES => Bits::Five.bytes(),
            _ => Bits::Eight.bytes(),
        };
        // One half at a time, over every block: its eight vectors of quants and the rows' accumulators
        // fit in the sixteen registers (the other half's quants are read again, from cache).
        for h in 0..2 {
            let lanes = t.cols.saturating_sub(8 * h).min(8);
            if lanes == 0 {
                continue;
            }
            let mut acc = [_mm256_setzero_ps(); R];
            for b in 0..t.blocks {
                let q = t.quants.add(b * tile_bytes + h * 32);
                let sc = t.scales.add(b * 2 * COLS + 8 * h);
                let d = _mm256_cvtph_ps(_mm_loadu_si128(sc as *const __m128i));
                let m = _mm256_cvtph_ps(_mm_loadu_si128(sc.add(COLS) as *const __m128i));
                let mut sums = [_mm256_setzero_si256(); R];
                match W {
                    FOUR | FIVE | FIVE_PLANES => {
                        // w[v]: inputs 4v..4v+4 of the half's columns.
                        let mut w = [_mm256_setzero_si256(); 8];
                        let high = match W {
                            FIVE_PLANES => _mm256_loadu_si256(q.add(4 * 64) as *const __m256i),
                            _ => _mm256_setzero_si256(),
                        };
                        for v in 0..4 {
                            if W == FOUR || W == FIVE_PLANES {
                                let raw = _mm256_loadu_si256(q.add(v * 64) as *const __m256i);
                                w[v] = _mm256_and_si256(raw, nibble);
                                w[v + 4] = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), nibble);
                                if W == FIVE_PLANES {
                                    w[v] = _mm256_or_si256(w[v], fifth(high, v));
                                    w[v + 4] = _mm256_or_si256(w[v + 4], fifth(high, v + 4));
                                }
                            } else {
                                w[v] = _mm256_loadu_si256(q.add(v * 64) as *const __m256i);
                                w[v + 4] = _mm256_loadu_si256(q.add((v + 4) * 64) as *const __m256i);
                            }
                        }
                        for (r, sum) in sums.iter_mut().enumerate() {
                            let x = t.xq.add(r * t.k + b * BLOCK) as *const i32;
                            let mut part = [_mm256_setzero_si256(); 2];
                            for v in 0..8 {
                                let xb = _mm256_set1_epi32(x.add(v).read_unaligned());
                                let p = &mut part[if W == FOUR { 0 } else { v / 4 }];
                                *p = _mm256_add_epi16(*p, _mm256_maddubs_epi16(w[v], xb));
                            }
                            *sum = _mm256_madd_epi16(part[0], ones);
                            if W != FOUR {
                                *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(part[1], ones));
                            }
                        }
                    }
                    _ => {
                        for (r, sum) in sums.iter_mut().enumerate() {
                            *sum = _mm256_set1_epi32(128 * *t.xsum.add(r * t.blocks + b));
                        }
                        // Four vectors at a time: q = u − 128 and |q|.
                        for quad in 0..2 {
                            let (mut w, mut a) = ([_mm256_setzero_si256(); 4], [_mm256_setzero_si256(); 4]);
                            for v in 0..4 {
                                let u = _mm256_loadu_si256(q.add((4 * quad + v) * 64) as *const __m256i);
                                w[v] = _mm256_xor_si256(u, flip);
                                a[v] = _mm256_abs_epi8(w[v]);
                            }
                            for (r, sum) in sums.iter_mut().enumerate() {
                                let x = t.xq.add(r * t.k + b * BLOCK + 16 * quad) as *const i32;
                                for v in 0..4 {
                                    let xb = _mm256_set1_epi32(x.add(v).read_unaligned());
                                    let p = _mm256_maddubs_epi16(a[v], _mm256_sign_epi8(xb, w[v]));
                                    *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(p, ones));
                                }
                            }
                        }
                    }
                }
                for (r, (acc, sum)) in acc.iter_mut().zip(sums).enumerate() {
                    let at = r * t.blocks + b;
                    let (dx, sx) = (_mm256_set1_ps(*t.dx.add(at)), _mm256_set1_ps(*t.sx.add(at)));
                    // The AVX-512 build's steps, in its order.
                    *acc = _mm256_fmadd_ps(_mm256_mul_ps(d, dx), _mm256_cvtepi32_ps(sum), *acc);
                    *acc = _mm256_fmadd_ps(m, sx, *acc);
                }
            }
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            for (r, acc) in acc.iter().enumerate() {
                let out = t.out.add(r * t.ldo + 8 * h);
                match lanes {
                    8 => _mm256_storeu_ps(out, *acc),
                    _ => _mm256_maskstore_ps(out, mask, *acc),
                }
            }
        }
    }

    /// Bit `v` of each byte of `high`, moved to bit 4 (the fifth bit of a quant). The 16-bit shifts
    /// move bits across the byte boundary, but never into bit 4 of either byte.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn fifth(high: __m256i, v: usize) -> __m256i {
        let moved = match v {
            0 => _mm256_slli_epi16::<4>(high),
            1 => _mm256_slli_epi16::<3>(high),
            2 => _mm256_slli_epi16::<2>(high),
            3 => _mm256_slli_epi16::<1>(high),
            4 => high,
            5 => _mm256_srli_epi16::<1>(high),
            6 => _mm256_srli_epi16::<2>(high),
            _ => _mm256_srli_epi16::<3>(high),
        };
        _mm256_and_si256(moved, _mm256_set1_epi8(0x10))
    }

    /// [`super::quantize_row`] on AVX2.
    pub(super) fn quantize_row(_: Avx2, row: &[f32], q: &mut [i8], dx: &mut [f32], sx: &mut [f32], sums: &mut [i32]) {
        let blocks = row.len() / BLOCK;
        assert!(
            row.len() == blocks * BLOCK && q.len() == row.len() && [dx.len(), sx.len(), sums.len()] == [blocks; 3],
            "quantize_row: lengths disagree"
        );
        // SAFETY: the token proves the features; every pointer stays within the slices checked above.
        unsafe { quantize(row.as_ptr(), q.as_mut_ptr(), blocks, dx, sx, sums) }
    }

    /// The scalar loop's bits: `max` of absolute values (NaN skipped, as `f32::max` does), rounding
    /// half away from zero (`f32::round`), clamping to ±127, NaN to 0 (`as i8`).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quantize(row: *const f32, q: *mut i8, blocks: usize, dx: &mut [f32], sx: &mut [f32], sums: &mut [i32]) {
        let sign = _mm256_set1_ps(-0.0);
        let (one, point5) = (_mm256_set1_ps(1.0), _mm256_set1_ps(0.5));
        let (hi, lo) = (_mm256_set1_ps(127.0), _mm256_set1_ps(-127.0));
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for b in 0..blocks {
            let p = row.add(b * BLOCK);
            let mut v = [_mm256_setzero_ps(); 4];
            for (i, v) in v.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(p.add(8 * i));
            }
            // `max_ps` returns its second operand where either is NaN: the running max.
            let mut amax = _mm256_setzero_ps();
            for v in v {
                amax = _mm256_max_ps(_mm256_andnot_ps(sign, v), amax);
            }
            let m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps::<1>(amax));
            let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps::<1>(m2, m2)));
            let d = amax / 127.0;
            let inv = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
            let mut ints = [_mm256_setzero_si256(); 4];
            for (v, int) in v.iter().zip(&mut ints) {
                let y = _mm256_mul_ps(*v, inv);
                let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(y);
                // y − trunc(y) is exact; a fraction of at least one half rounds away from zero.
                let up = _mm256_cmp_ps::<_CMP_GE_OQ>(_mm256_andnot_ps(sign, _mm256_sub_ps(y, t)), point5);
                let step = _mm256_and_ps(up, _mm256_or_ps(_mm256_and_ps(y, sign), one));
                let r = _mm256_max_ps(_mm256_min_ps(_mm256_add_ps(t, step), hi), lo);
                let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(y, y));
                *int = _mm256_cvtps_epi32(r);
            }
            let sum = _mm256_add_epi32(_mm256_add_epi32(ints[0], ints[1]), _mm256_add_epi32(ints[2], ints[3]));
            let s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256::<1>(sum));
            let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
            let sum = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32::<1>(s2)));
            // Packing works within 128-bit lanes: the permutation puts the four-byte groups in order.
            let packed = _mm256_packs_epi16(_mm256_packs_epi32(ints[0], ints[1]), _mm256_packs_epi32(ints[2], ints[3]));
            let packed = _mm256_permutevar8x32_epi32(packed, order);
            _mm256_storeu_si256(q.add(b * BLOCK) as *mut __m256i, packed);
            dx[b] = d;
            sx[b] = d * sum as f32;
            sums[b] = sum;
        }
    }
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
                    // `Bits::Five` is packed for the AVX2 build only.
                    _ => unreachable!("{rows} rows of {bits:?} quants"),
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
    use crate::engines::kernels::sample_values as values;
    use crate::engines::kernels::{Avx512Vnni, STALE_BUILD};
    use candle_core::quantized::QMatMul;
    use candle_core::{Device, Module, Tensor};

    /// Every type the tests quantize to.
    const TYPES: [GgmlDType; 9] = [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
        GgmlDType::F32,
    ];

    /// `(m, n, k)`: one row and several, a row tile and more (8, 9, 64), `n` off the 16-column groups,
    /// `k` of one or several K-quant super-blocks or none.
    const SHAPES: [(usize, usize, usize); 9] = [
        (1, 16, 32),
        (1, 100, 256),
        (3, 40, 64),
        (3, 37, 512),
        (9, 100, 256),
        (9, 33, 576),
        (8, 576, 576),
        (1, 576, 1536),
        (64, 48, 256),
    ];

    fn quantize(dtype: GgmlDType, n: usize, k: usize, seed: u32) -> QTensor {
        let w = Tensor::from_vec(values(n * k, seed), (n, k), &Device::Cpu).unwrap();
        QTensor::quantize(&w, dtype).unwrap()
    }

    fn k_quant(dtype: GgmlDType) -> bool {
        matches!(dtype, GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K)
    }

    #[test]
    fn the_reference_agrees_with_candles_quantized_matmul() {
        // candle quantizes activations too, so the two differ by rounding: little for the types whose
        // activations it rounds per block of 32 (Q8_0 / Q8_1), as the kernel does; for the others (per
        // 256, or not at all for F32) up to a step of each rounding per input, bounded by the
        // super-block's largest activation.
        for dtype in TYPES {
            let (m, n, k) = (3, 40, 256);
            let q = quantize(dtype, n, k, 7);
            let w = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let x = values(m * k, 9);
            let want = reference(&q, &x, m).unwrap();
            let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
            let got = QMatMul::from_qtensor(q).unwrap().forward(&xt).unwrap().flatten_all().unwrap();
            for (i, (g, r)) in got.to_vec1::<f32>().unwrap().iter().zip(&want).enumerate() {
                let (row, col) = (i / n, i % n);
                let tol = match k_quant(dtype) || dtype == GgmlDType::F32 {
                    false => 2e-2 * (1.0 + r.abs()),
                    true => {
                        let x = &x[row * k..][..k];
                        let step =
                            |i: usize| x[i / SUPER * SUPER..][..SUPER].iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                        (0..k).map(|i| w[col * k + i].abs() * step(i)).sum::<f32>() + 1e-3 * (1.0 + r.abs())
                    }
                };
                assert!((g - r).abs() <= tol, "{dtype:?} at {i}: candle {g} vs reference {r}");
            }
        }
    }

    #[test]
    fn native_types_unpack_to_candles_dequantization() {
        for dtype in TYPES {
            let (n, k) = (24, 512);
            let q = quantize(dtype, n, k, 5);
            let Some((bits, blocks)) = unpack(dtype, &q.data().unwrap()) else {
                assert!(!native(dtype), "{dtype:?} is native but does not unpack");
                continue;
            };
            assert!(native(dtype), "{dtype:?} unpacks but is not native");
            assert_eq!(blocks.len(), n * k / BLOCK, "{dtype:?}");
            let top = if bits == Bits::Four { 15 } else { 255 };
            let want = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (b, ((d, m, u), want)) in blocks.iter().zip(want.chunks_exact(BLOCK)).enumerate() {
                for (i, (&u, &want)) in u.iter().zip(want).enumerate() {
                    assert!(u <= top, "{dtype:?} block {b}: quant {u}");
                    let got = d.to_f32() * u as f32 + m.to_f32();
                    // K-quants' block scales d·sc and dmin·mn are rounded to f16 (half an ulp: 2⁻¹¹).
                    let tol = match k_quant(dtype) {
                        true => (d.to_f32().abs() * u as f32 + m.to_f32().abs()) / 2048.0 + 1e-6,
                        false => 1e-6 * (1.0 + want.abs()),
                    };
                    assert!((got - want).abs() <= tol, "{dtype:?} block {b} input {i}: {got} vs {want}");
                }
            }
        }
    }

    /// The kernel against the reference.
    fn check(cpu: Int8, dtype: GgmlDType, m: usize, n: usize, k: usize) {
        let q = quantize(dtype, n, k, 7);
        let packed = PackedQuant::from_qtensor(cpu, &q).unwrap().expect("packable");
        let five = matches!(dtype, GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q5K);
        assert_eq!(packed.narrow, five, "{dtype:?}");
        let x = values(m * k, 9);
        let got = packed.forward(&x, m);
        let want = reference(&q, &x, m).unwrap();
        // Weights of other types are re-quantized to 8 bits: allow that rounding too. K-quants' block
        // scales are rounded to f16: allow half an ulp of each, `(|d|·u + |m|)·2⁻¹¹` per weight.
        let tol = if native(dtype) { 2e-3 } else { 0.1 };
        let blocks = unpack(dtype, &q.data().unwrap()).filter(|_| k_quant(dtype)).map(|(_, blocks)| blocks);
        let scales = |row: usize, col: usize| {
            let Some(blocks) = &blocks else { return 0.0 };
            let blocks = &blocks[col * k / BLOCK..][..k / BLOCK];
            let rounding = |(i, x): (usize, &f32)| {
                let (d, m, u) = blocks[i / BLOCK];
                (d.to_f32().abs() * u[i % BLOCK] as f32 + m.to_f32().abs()) * x.abs() / 2048.0
            };
            x[row * k..][..k].iter().enumerate().map(rounding).sum::<f32>()
        };
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let bound = tol * (1.0 + w.abs()) + scales(i / n, i % n);
            assert!((g - w).abs() <= bound, "{dtype:?} {m}×{n}×{k} at {i}: {g} vs {w}");
        }
    }

    fn matches_the_reference(cpu: Int8) {
        for dtype in TYPES {
            for (m, n, k) in SHAPES {
                if !k_quant(dtype) || k % SUPER == 0 {
                    check(cpu, dtype, m, n, k);
                }
            }
        }
    }

    /// Each row of a call against the same row alone, bit for bit, for 4-bit, 5-bit and 8-bit quants.
    fn a_row_does_not_depend_on_its_neighbours(cpu: Int8) {
        let (n, k) = (48, 256);
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q5K, GgmlDType::Q8_0] {
            let packed = PackedQuant::from_qtensor(cpu, &quantize(dtype, n, k, 3)).unwrap().unwrap();
            let x = values(11 * k, 4);
            let all = packed.forward(&x, 11);
            for r in 0..11 {
                assert_eq!(&all[r * n..(r + 1) * n], &packed.forward(&x[r * k..(r + 1) * k], 1)[..], "{dtype:?}");
            }
        }
    }

    /// Quants and activations at the ends of their ranges, where 16-bit sums would saturate.
    fn extreme_quants_do_not_saturate(cpu: Int8) {
        let (m, n, k) = (5, 20, 256);
        let sign = |i: usize, seed: u32| values(1, (i as u32).wrapping_mul(31).wrapping_add(seed))[0] >= 0.0;
        // Activations ±1 become ±127.
        let x: Vec<f32> = (0..m * k).map(|i| if sign(i, 1) { 1.0 } else { -1.0 }).collect();
        // 8 bits: w = −1 + u/128 with u ∈ {0, 255}, which `from_f32` keeps exactly (d = 1/128, m = −1);
        // in every second column all weights are top quants and some rows all +127 activations.
        let top = -1.0 + 255.0 / 128.0;
        let mut w: Vec<f32> = (0..n * k).map(|i| if sign(i, 2) { top } else { -1.0 }).collect();
        for c in (0..n).step_by(2) {
            w[c * k..(c + 1) * k].iter_mut().enumerate().for_each(|(i, w)| *w = if i % 32 == 0 { -1.0 } else { top });
        }
        let mut x = x;
        x[..2 * k].fill(1.0);
        x[2 * k..3 * k].fill(-1.0);
        let tensor = |w: &[f32]| Tensor::from_vec(w.to_vec(), (n, k), &Device::Cpu).unwrap();
        let exact = QTensor::quantize(&tensor(&w), GgmlDType::F32).unwrap();
        let got = PackedQuant::from_f32(cpu, &w, n, k).forward(&x, m);
        let want = reference(&exact, &x, m).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "8-bit at {i}: {g} vs {w}");
        }
        // 4 bits (Q4_1 of blocks spanning −1..1: quants 0 and 15), and 5 bits (Q5_1: 0 and 31).
        let w: Vec<f32> = w.iter().map(|&w| if w < 0.0 { -1.0 } else { 1.0 }).collect();
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q5_1] {
            let q = QTensor::quantize(&tensor(&w), dtype).unwrap();
            let got = PackedQuant::from_qtensor(cpu, &q).unwrap().unwrap().forward(&x, m);
            let want = reference(&q, &x, m).unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{dtype:?} at {i}: {g} vs {w}");
            }
        }
    }

    fn avx2() -> Int8 {
        Int8::Avx2(Avx2::detect().expect(STALE_BUILD))
    }

    fn vnni() -> Int8 {
        Int8::Vnni(Avx512Vnni::detect().expect(STALE_BUILD))
    }

    #[test]
    #[cfg_attr(not(sis_host_avx2), ignore = "needs AVX2")]
    fn avx2_matches_the_reference() {
        matches_the_reference(avx2());
    }

    #[test]
    #[cfg_attr(not(sis_host_avx2), ignore = "needs AVX2")]
    fn avx2_a_row_does_not_depend_on_its_neighbours() {
        a_row_does_not_depend_on_its_neighbours(avx2());
    }

    #[test]
    #[cfg_attr(not(sis_host_avx2), ignore = "needs AVX2")]
    fn avx2_extreme_quants_do_not_saturate() {
        extreme_quants_do_not_saturate(avx2());
    }

    #[test]
    #[cfg_attr(not(sis_host_avx2), ignore = "needs AVX2")]
    fn avx2_quantizes_activations_as_the_scalar_loop_does() {
        let cpu = Avx2::detect().expect(STALE_BUILD);
        let mut rows = vec![values(4 * BLOCK, 11)];
        // Exact halves (amax 127 makes the scale 1), the edge just below a half, zeros, tiny and
        // non-finite values.
        let mut halves: Vec<f32> = (0..BLOCK).map(|i| i as f32 - 15.5).collect();
        halves[0] = 127.0;
        halves[1] = 0.49999997;
        halves[2] = -0.49999997;
        rows.push(halves);
        rows.push(vec![0.0; BLOCK]);
        // So tiny that the inverse scale overflows to ∞.
        rows.push((0..BLOCK).map(|i| (i as f32 - 16.0) * 1e-40).collect());
        let mut odd = values(BLOCK, 12);
        odd[3] = f32::NAN;
        odd[7] = f32::INFINITY;
        odd[9] = f32::NEG_INFINITY;
        rows.push(odd);
        let mut nan = values(BLOCK, 13);
        nan[5] = f32::NAN;
        rows.push(nan);
        for row in rows {
            let blocks = row.len() / BLOCK;
            let scalar = {
                let (mut q, mut d, mut s, mut t) =
                    (vec![0; row.len()], vec![0.0; blocks], vec![0.0; blocks], vec![0; blocks]);
                quantize_row_scalar(&row, &mut q, &mut d, &mut s, &mut t);
                (
                    q,
                    d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    s.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    t,
                )
            };
            let simd = {
                let (mut q, mut d, mut s, mut t) =
                    (vec![0; row.len()], vec![0.0; blocks], vec![0.0; blocks], vec![0; blocks]);
                quantize_row(Some(cpu), &row, &mut q, &mut d, &mut s, &mut t);
                (
                    q,
                    d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    s.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    t,
                )
            };
            assert_eq!(simd, scalar, "{row:?}");
            assert!(simd.0.iter().all(|&q| q != i8::MIN), "{row:?}: {:?}", simd.0);
        }
    }

    #[test]
    #[cfg_attr(not(sis_host_avx512vnni), ignore = "needs AVX-512 VNNI")]
    fn vnni_matches_the_reference() {
        matches_the_reference(vnni());
    }

    #[test]
    #[cfg_attr(not(sis_host_avx512vnni), ignore = "needs AVX-512 VNNI")]
    fn vnni_a_row_does_not_depend_on_its_neighbours() {
        a_row_does_not_depend_on_its_neighbours(vnni());
    }

    #[test]
    #[cfg_attr(not(sis_host_avx512vnni), ignore = "needs AVX-512 VNNI")]
    fn vnni_extreme_quants_do_not_saturate() {
        extreme_quants_do_not_saturate(vnni());
    }

    /// Both builds give the same bits (their integer sums are exact and their f32 steps the same).
    #[test]
    #[cfg_attr(not(all(sis_host_avx2, sis_host_avx512vnni)), ignore = "needs AVX2 and AVX-512 VNNI")]
    fn the_builds_agree_bit_for_bit() {
        for dtype in TYPES {
            let (m, n, k) = (9, 40, 512);
            let q = quantize(dtype, n, k, 7);
            let x = values(m * k, 9);
            let [a, b] =
                [avx2(), vnni()].map(|cpu| PackedQuant::from_qtensor(cpu, &q).unwrap().unwrap().forward(&x, m));
            assert_eq!(a, b, "{dtype:?}");
        }
    }
}
