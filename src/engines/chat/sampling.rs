//! Choosing the next token: penalties, temperature, nucleus (top-p), seeded randomness.

use rand::rngs::StdRng;
use rand::Rng;
use std::collections::HashMap;

/// Sampling settings of one sequence.
#[derive(Debug, Clone)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus mass kept.
    pub top_p: f32,
    /// Subtracted from the logit of every token already generated.
    pub presence_penalty: f32,
    /// Subtracted once per previous occurrence.
    pub frequency_penalty: f32,
}

/// Candidates considered for top-p (the rest of the distribution carries negligible mass).
const NUCLEUS_CAP: usize = 1024;

/// Picks a token from `logits` (modified in place).
pub fn sample(logits: &mut [f32], s: &Sampling, counts: &HashMap<u32, u32>, rng: &mut StdRng) -> u32 {
    penalise(logits, s, counts);
    if s.temperature <= 0.0 {
        return argmax(logits);
    }
    draw(top_candidates(logits, |_| true), s, rng).expect("a vocabulary is never empty")
}

/// Picks a token among those `allowed` (constrained decoding); `None` if no token is allowed.
/// The distribution is the unconstrained one restricted to allowed tokens.
pub fn sample_allowed(
    logits: &mut [f32],
    s: &Sampling,
    counts: &HashMap<u32, u32>,
    rng: &mut StdRng,
    allowed: &dyn Fn(u32) -> bool,
) -> Option<u32> {
    penalise(logits, s, counts);
    let mut candidates = top_candidates(logits, allowed);
    if candidates.is_empty() {
        // Nothing likely fits: look through the whole vocabulary.
        candidates =
            logits.iter().enumerate().filter(|(i, _)| allowed(*i as u32)).map(|(i, &l)| (l, i as u32)).collect();
        candidates.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    }
    if s.temperature <= 0.0 {
        return candidates.first().map(|c| c.1);
    }
    draw(candidates, s, rng)
}

fn penalise(logits: &mut [f32], s: &Sampling, counts: &HashMap<u32, u32>) {
    for (&token, &count) in counts {
        if let Some(l) = logits.get_mut(token as usize) {
            *l -= s.presence_penalty + s.frequency_penalty * count as f32;
        }
    }
}

/// The `NUCLEUS_CAP` largest logits that pass `keep`, largest first, as (logit, token).
fn top_candidates(logits: &[f32], keep: impl Fn(u32) -> bool) -> Vec<(f32, u32)> {
    let mut all: Vec<(f32, u32)> = logits.iter().enumerate().map(|(i, &l)| (l, i as u32)).collect();
    let order = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    let cap = NUCLEUS_CAP.min(all.len());
    if cap < all.len() {
        all.select_nth_unstable_by(cap - 1, order);
        all.truncate(cap);
    }
    all.sort_unstable_by(order);
    all.retain(|c| keep(c.1));
    all
}

/// Temperature and nucleus over candidates sorted by logit, largest first.
fn draw(candidates: Vec<(f32, u32)>, s: &Sampling, rng: &mut StdRng) -> Option<u32> {
    let max = candidates.first()?.0;
    let inv_t = 1.0 / s.temperature;
    let probs: Vec<(f32, u32)> = candidates.iter().map(|&(l, i)| (((l - max) * inv_t).exp(), i)).collect();
    let total: f32 = probs.iter().map(|p| p.0).sum();
    let target = s.top_p.clamp(0.0, 1.0) * total;
    let mut mass = 0.0;
    let mut cut = probs.len();
    for (i, p) in probs.iter().enumerate() {
        mass += p.0;
        if mass >= target {
            cut = i + 1;
            break;
        }
    }
    let nucleus = &probs[..cut.max(1)];
    let sum: f32 = nucleus.iter().map(|p| p.0).sum();
    let mut r = rng.random::<f32>() * sum;
    for p in nucleus {
        r -= p.0;
        if r <= 0.0 {
            return Some(p.1);
        }
    }
    nucleus.last().map(|p| p.1)
}

/// Index of the largest logit (the lowest index among ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn greedy_penalties_and_seeds() {
        let s = Sampling { temperature: 0.0, top_p: 1.0, presence_penalty: 0.0, frequency_penalty: 0.0 };
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(sample(&mut [0.1, 2.0, 1.0], &s, &HashMap::new(), &mut rng), 1);
        let penalised = Sampling { presence_penalty: 5.0, ..s.clone() };
        assert_eq!(sample(&mut [0.1, 2.0, 1.0], &penalised, &HashMap::from([(1, 1)]), &mut rng), 2);
        let hot = Sampling { temperature: 1.0, top_p: 0.9, ..s };
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..20).map(|_| sample(&mut [1.0, 1.1, 0.9, 1.05], &hot, &HashMap::new(), &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        let s = Sampling { temperature: 1.0, top_p: 0.5, presence_penalty: 0.0, frequency_penalty: 0.0 };
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..50 {
            assert_eq!(sample(&mut [10.0, 0.0, 0.0, 0.0], &s, &HashMap::new(), &mut rng), 0);
        }
    }

    #[test]
    fn constrained_sampling_only_picks_allowed_tokens() {
        let greedy = Sampling { temperature: 0.0, top_p: 1.0, presence_penalty: 0.0, frequency_penalty: 0.0 };
        let mut rng = StdRng::seed_from_u64(3);
        let odd = |t: u32| t % 2 == 1;
        assert_eq!(sample_allowed(&mut [5.0, 1.0, 4.0, 2.0], &greedy, &HashMap::new(), &mut rng, &odd), Some(3));
        let hot = Sampling { temperature: 1.5, ..greedy };
        for _ in 0..50 {
            let t = sample_allowed(&mut [5.0, 1.0, 4.0, 2.0, 0.0], &hot, &HashMap::new(), &mut rng, &odd).unwrap();
            assert!(odd(t));
        }
        assert_eq!(sample_allowed(&mut [1.0, 2.0], &hot, &HashMap::new(), &mut rng, &|_| false), None);
    }
}
