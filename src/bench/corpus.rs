//! A seeded corpus of plain English sentences, the same for every run with the same seed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SUBJECTS: &[&str] = &[
    "the old man",
    "a young woman",
    "my neighbour",
    "the teacher",
    "our team",
    "the small dog",
    "a tired farmer",
    "the new manager",
    "his sister",
    "the children",
    "a careful driver",
    "the local baker",
    "every student",
    "the quiet engineer",
    "a famous writer",
    "the city council",
];
const VERBS: &[&str] = &[
    "walked to",
    "looked at",
    "talked about",
    "cleaned",
    "painted",
    "visited",
    "described",
    "carried",
    "repaired",
    "noticed",
    "ordered",
    "remembered",
    "photographed",
    "explained",
    "built",
    "discovered",
];
const OBJECTS: &[&str] = &[
    "the red bicycle",
    "a quiet library",
    "the market square",
    "an old wooden boat",
    "the broken window",
    "a bowl of soup",
    "the mountain road",
    "the evening news",
    "a letter from home",
    "the garden fence",
    "the train station",
    "a cup of coffee",
    "the science museum",
    "a pile of books",
    "the harbour lights",
];
const TAILS: &[&str] = &[
    "before the sun went down",
    "after a long day at work",
    "while the rain kept falling",
    "because nobody else had time",
    "with a smile on their face",
    "in the middle of the afternoon",
    "without saying a single word",
    "as the crowd slowly gathered",
    "during the short winter holiday",
    "even though it was very late",
    "next to the busy main street",
    "on the first warm morning of spring",
];
const FILLERS: &[&str] = &["and then", "so", "but later", "and after that", "although", "while", "because", "until"];

/// `n` sentences of roughly 8–40 words, deterministic for a seed.
pub fn sentences(n: usize, seed: u64) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let pick = |rng: &mut StdRng, list: &[&'static str]| list[rng.random_range(0..list.len())];
    (0..n)
        .map(|_| {
            let clauses = rng.random_range(1..=3);
            let mut words: Vec<&str> = Vec::new();
            for c in 0..clauses {
                if c > 0 {
                    words.push(pick(&mut rng, FILLERS));
                }
                words.push(pick(&mut rng, SUBJECTS));
                words.push(pick(&mut rng, VERBS));
                words.push(pick(&mut rng, OBJECTS));
                if rng.random_bool(0.6) {
                    words.push(pick(&mut rng, TAILS));
                }
            }
            let mut sentence = words.join(" ");
            if let Some(first) = sentence.get(..1) {
                sentence = first.to_uppercase() + &sentence[1..];
            }
            sentence.push('.');
            sentence
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn deterministic_and_sized() {
        let a = super::sentences(50, 7);
        assert_eq!(a, super::sentences(50, 7));
        for s in &a {
            let words = s.split_whitespace().count();
            assert!((5..=45).contains(&words), "{words} words: {s}");
        }
    }
}
