use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How the next token is chosen from the logits.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep the `k` most likely tokens (`None`: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches `p` (`None`: all).
    pub top_p: Option<f32>,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }
}

/// Draws tokens with a seeded generator: the same seed gives the same text.
pub struct Sampler {
    config: SamplingConfig,
    rng: StdRng,
}

impl Sampler {
    pub fn new(config: SamplingConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        Self { config, rng }
    }

    /// The next token for one position's logits. Temperature, then top-k, then top-p,
    /// in the order transformers applies its warpers.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.config.temperature <= 0.0 {
            return argmax(logits);
        }
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l / self.config.temperature))
            .collect();
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
        if let Some(k) = self.config.top_k {
            candidates.truncate(k.max(1));
        }
        let max = candidates[0].1;
        let mut probs: Vec<f32> = candidates.iter().map(|(_, l)| (l - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if let Some(top_p) = self.config.top_p {
            let mut cumulative = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    cumulative += p;
                    cumulative >= top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            let total: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
        }
        let mut draw: f32 = self.rng.random();
        for (i, p) in probs.iter().enumerate() {
            draw -= p;
            if draw <= 0.0 {
                return candidates[i].0;
            }
        }
        candidates[probs.len() - 1].0
    }
}

/// The first index of the largest value, as `torch.argmax` picks.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOGITS: [f32; 5] = [0.1, 2.0, 1.5, -1.0, 1.9];

    #[test]
    fn zero_temperature_is_greedy() {
        assert_eq!(Sampler::new(SamplingConfig::default()).sample(&LOGITS), 1);
    }

    #[test]
    fn top_k_of_one_is_greedy_at_any_temperature() {
        let config = SamplingConfig {
            temperature: 5.0,
            top_k: Some(1),
            ..Default::default()
        };
        let mut sampler = Sampler::new(config);
        assert!((0..50).all(|_| sampler.sample(&LOGITS) == 1));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        let config = SamplingConfig {
            temperature: 1.0,
            top_p: Some(0.5),
            ..Default::default()
        };
        let mut sampler = Sampler::new(config);
        // Token 1 alone holds < 0.5 of the mass; tokens 1 and 4 reach it.
        assert!((0..200).all(|_| matches!(sampler.sample(&LOGITS), 1 | 4)));
    }

    #[test]
    fn the_same_seed_draws_the_same_tokens() {
        let config = SamplingConfig {
            temperature: 1.0,
            seed: 42,
            ..Default::default()
        };
        let draw = |c: &SamplingConfig| {
            let mut s = Sampler::new(c.clone());
            (0..20).map(|_| s.sample(&LOGITS)).collect::<Vec<_>>()
        };
        assert_eq!(draw(&config), draw(&config));
        assert_ne!(
            draw(&config),
            draw(&SamplingConfig {
                seed: 43,
                ..config.clone()
            })
        );
    }
}
