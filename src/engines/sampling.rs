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
    for (&token, &count) in counts {
        if let Some(l) = logits.get_mut(token as usize) {
            *l -= s.presence_penalty + s.frequency_penalty * count as f32;
        }
    }
    if s.temperature <= 0.0 {
        return argmax(logits);
    }
    let inv_t = 1.0 / s.temperature;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(f32, u32)> =
        logits.iter().enumerate().map(|(i, &l)| (((l - max) * inv_t).exp(), i as u32)).collect();
    let total: f32 = probs.iter().map(|p| p.0).sum();
    let keep = NUCLEUS_CAP.min(probs.len());
    if keep < probs.len() {
        probs.select_nth_unstable_by(keep - 1, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        probs.truncate(keep);
    }
    probs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
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
            return p.1;
        }
    }
    nucleus[nucleus.len() - 1].1
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
}
