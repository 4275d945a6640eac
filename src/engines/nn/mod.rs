//! Layers shared by the model families: attention (written once, with its candle reference path and
//! the CPU loops that replace it) and dense layers (candle's matmul, or a CPU kernel behind one type).

pub mod attention;
pub mod dense;
pub mod ranking;
