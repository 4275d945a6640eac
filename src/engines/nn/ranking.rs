//! The most likely tokens of a distribution, as beam search (Whisper) and log-probabilities (chat)
//! both need them.

/// Indices of the `k` largest values, largest first; ties keep the lower index first; `-inf` (a
/// masked token) is never taken. One pass with a list of at most `k`: no vocabulary-sized buffer.
pub fn top(values: &[f32], k: usize) -> Vec<usize> {
    let mut best: Vec<usize> = Vec::with_capacity(k + 1);
    for (i, &v) in values.iter().enumerate() {
        if v == f32::NEG_INFINITY || (best.len() == k && best.last().is_none_or(|&w| v <= values[w])) {
            continue;
        }
        let at = best.partition_point(|&j| values[j] >= v);
        best.insert(at, i);
        best.truncate(k);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_keeps_the_largest_in_order_and_skips_masked_entries() {
        let v = [0.5, f32::NEG_INFINITY, 2.0, 2.0, -1.0, 3.0];
        assert_eq!(top(&v, 3), vec![5, 2, 3]);
        assert_eq!(top(&v, 10), vec![5, 2, 3, 0, 4]);
        assert_eq!(top(&v, 0), Vec::<usize>::new());
        assert_eq!(top(&[f32::NEG_INFINITY; 3], 2), Vec::<usize>::new());
    }
}
