//! Word timestamps from cross-attention, as openai-whisper finds them: the alignment heads' attention
//! over audio frames, normalized per frame and median-filtered, is aligned to the text tokens with
//! dynamic time warping; a word starts where the path enters its first token.

/// Audio positions per second (the encoder halves 100 mel frames per second).
pub const POSITIONS_PER_SECOND: f64 = 50.0;

/// Median filter of odd `width` along each row, with reflected edges.
pub fn median_filter(row: &[f32], width: usize) -> Vec<f32> {
    let n = row.len();
    let half = width / 2;
    if n <= half {
        return row.to_vec();
    }
    let at = |i: isize| -> f32 {
        let i = if i < 0 {
            -i
        } else if i >= n as isize {
            2 * (n as isize - 1) - i
        } else {
            i
        };
        row[i.clamp(0, n as isize - 1) as usize]
    };
    let mut window = vec![0f32; width];
    (0..n)
        .map(|i| {
            for (k, w) in window.iter_mut().enumerate() {
                *w = at(i as isize + k as isize - half as isize);
            }
            window.sort_by(|a, b| a.total_cmp(b));
            window[half]
        })
        .collect()
}

/// Dynamic time warping over a `rows × cols` cost matrix; returns the path as (row, col) pairs from
/// (0, 0) to (rows − 1, cols − 1).
pub fn dtw(cost: &[f32], rows: usize, cols: usize) -> Vec<(usize, usize)> {
    let inf = f32::INFINITY;
    let mut acc = vec![inf; (rows + 1) * (cols + 1)];
    let mut trace = vec![0u8; (rows + 1) * (cols + 1)];
    let idx = |i: usize, j: usize| i * (cols + 1) + j;
    acc[0] = 0.0;
    for j in 1..=cols {
        for i in 1..=rows {
            let (c0, c1, c2) = (acc[idx(i - 1, j - 1)], acc[idx(i - 1, j)], acc[idx(i, j - 1)]);
            let (best, t) = if c0 <= c1 && c0 <= c2 {
                (c0, 0)
            } else if c1 <= c2 {
                (c1, 1)
            } else {
                (c2, 2)
            };
            acc[idx(i, j)] = cost[(i - 1) * cols + (j - 1)] + best;
            trace[idx(i, j)] = t;
        }
    }
    let (mut i, mut j) = (rows, cols);
    let mut path = Vec::new();
    while i > 0 || j > 0 {
        path.push((i.saturating_sub(1), j.saturating_sub(1)));
        let t = if i == 0 {
            2
        } else if j == 0 {
            1
        } else {
            trace[idx(i, j)]
        };
        match t {
            0 => {
                i -= 1;
                j -= 1;
            }
            1 => i -= 1,
            _ => j -= 1,
        }
    }
    path.reverse();
    path.dedup();
    path
}

/// Aligns token rows to audio positions. `weights` holds, per alignment head, a `rows × cols` matrix
/// of cross-attention (rows = tokens, cols = audio positions of the window's content). Returns for
/// each row the time (seconds) at which the path enters it.
pub fn token_times(weights: &[Vec<f32>], rows: usize, cols: usize) -> Vec<f64> {
    if rows == 0 || cols == 0 || weights.is_empty() {
        return vec![0.0; rows];
    }
    let mut matrix = vec![0f32; rows * cols];
    for head in weights {
        // Normalize each column over the token rows, then smooth along time.
        let mut normalized = head.clone();
        for c in 0..cols {
            let column: Vec<f32> = (0..rows).map(|r| head[r * cols + c]).collect();
            let mean = column.iter().sum::<f32>() / rows as f32;
            let var = column.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / (rows.max(2) - 1) as f32;
            let std = var.sqrt().max(1e-6);
            for r in 0..rows {
                normalized[r * cols + c] = (head[r * cols + c] - mean) / std;
            }
        }
        for r in 0..rows {
            let smooth = median_filter(&normalized[r * cols..(r + 1) * cols], 7);
            for (m, s) in matrix[r * cols..(r + 1) * cols].iter_mut().zip(smooth) {
                *m += s / weights.len() as f32;
            }
        }
    }
    let cost: Vec<f32> = matrix.iter().map(|x| -x).collect();
    let path = dtw(&cost, rows, cols);
    let mut times = vec![0.0; rows];
    let mut last_row = usize::MAX;
    for (r, c) in path {
        if r != last_row {
            times[r] = c as f64 / POSITIONS_PER_SECOND;
            last_row = r;
        }
    }
    times
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_filter_reflects_edges() {
        assert_eq!(median_filter(&[1.0, 9.0, 2.0, 8.0, 3.0], 3), vec![9.0, 2.0, 8.0, 3.0, 8.0]);
    }

    #[test]
    fn dtw_follows_the_cheap_diagonal() {
        // Three tokens over six positions: token r is cheap at positions 2r and 2r + 1.
        let (rows, cols) = (3, 6);
        let cost: Vec<f32> = (0..rows * cols).map(|k| if (k % cols) / 2 == k / cols { 0.0 } else { 1.0 }).collect();
        let path = dtw(&cost, rows, cols);
        assert_eq!(path.first(), Some(&(0, 0)));
        assert_eq!(path.last(), Some(&(2, 5)));
        let entries: Vec<usize> = (0..rows).map(|r| path.iter().find(|p| p.0 == r).unwrap().1).collect();
        assert_eq!(entries, vec![0, 2, 4]);
    }

    #[test]
    fn token_times_follow_attention() {
        let (rows, cols) = (4, 40);
        // Token r attends to positions 10r..10r+10.
        let head: Vec<f32> = (0..rows * cols).map(|k| if (k % cols) / 10 == k / cols { 1.0 } else { 0.0 }).collect();
        let times = token_times(&[head], rows, cols);
        for (r, t) in times.iter().enumerate() {
            assert!((t - r as f64 * 10.0 / POSITIONS_PER_SECOND).abs() <= 0.06, "token {r} at {t}");
        }
    }
}
