//! Which projections (and expert weights) get an adapter, and with which rank and alpha:
//! PEFT's matching rules.

use regex::Regex;

use crate::config::{LoraConfig, PROJECTIONS, Targets};
use crate::error::{LoraError, Result};

/// The adapter one projection gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    pub rank: usize,
    pub alpha: f64,
    /// `alpha / rank`, or `alpha / sqrt(rank)` with rsLoRA.
    pub scale: f64,
}

/// Decides, for each projection path (`model.layers.3.mlp.down_proj`), whether it is
/// targeted and with what rank and alpha.
pub struct Resolver<'a> {
    config: &'a LoraConfig,
    target_regex: Option<Regex>,
    rank_patterns: Vec<(Regex, usize)>,
    alpha_patterns: Vec<(Regex, f64)>,
}

impl<'a> Resolver<'a> {
    pub fn new(config: &'a LoraConfig) -> Result<Self> {
        let target_regex = match &config.target_modules {
            Targets::Regex(pattern) => Some(compile("target_modules", &format!("^(?:{pattern})$"))?),
            _ => None,
        };
        // PEFT matches pattern keys against the end of the module path: `(.*\.)?key$`.
        let suffix = |key: &str| compile(key, &format!(r"^(?:.*\.)?(?:{key})$"));
        Ok(Self {
            config,
            target_regex,
            rank_patterns: config
                .rank_pattern
                .iter()
                .map(|(k, r)| Ok((suffix(k)?, *r)))
                .collect::<Result<_>>()?,
            alpha_patterns: config
                .alpha_pattern
                .iter()
                .map(|(k, a)| Ok((suffix(k)?, *a)))
                .collect::<Result<_>>()?,
        })
    }

    /// The adapter for the projection at `path` in layer `layer`, if it gets one.
    pub fn target(&self, path: &str, layer: usize) -> Option<Target> {
        let targeted = match &self.config.target_modules {
            Targets::AllLinear => true,
            Targets::Regex(_) => self.target_regex.as_ref().is_some_and(|re| re.is_match(path)),
            Targets::Names(names) => {
                names.iter().any(|n| path == n || path.ends_with(&format!(".{n}")))
                    && self
                        .config
                        .layers_to_transform
                        .as_ref()
                        .is_none_or(|layers| layers.contains(&layer))
            }
        };
        targeted.then(|| self.sized(path))
    }

    /// The adapter for the parameter at `path` (`model.layers.3.experts.down_proj`), if
    /// `target_parameters` names it: its whole path or a dotted end of it, in every layer
    /// (PEFT's rule, which `layers_to_transform` does not restrict).
    pub fn parameter(&self, path: &str) -> Option<Target> {
        let named = |name: &String| path == name || path.ends_with(&format!(".{name}"));
        self.config
            .target_parameters
            .iter()
            .any(named)
            .then(|| self.sized(path))
    }

    /// Rank, alpha and scale of the adapter at `path`, patterns applied.
    fn sized(&self, path: &str) -> Target {
        let rank = first_match(&self.rank_patterns, path).unwrap_or(self.config.r);
        let alpha = first_match(&self.alpha_patterns, path).unwrap_or(self.config.lora_alpha);
        let scale = if self.config.use_rslora {
            alpha / (rank as f64).sqrt()
        } else {
            alpha / rank as f64
        };
        Target { rank, alpha, scale }
    }

    /// Fails if a named target matches none of the model's projections (say `lm_head`),
    /// rather than silently training less than the user asked for.
    pub fn check_names_match(&self, paths: &[String]) -> Result<()> {
        if let Targets::Names(names) = &self.config.target_modules {
            for name in names {
                if !paths.iter().any(|p| p == name || p.ends_with(&format!(".{name}"))) {
                    return Err(LoraError::Config {
                        path: "adapter_config.json".into(),
                        key: "target_modules".into(),
                        message: format!(
                            "`{name}` matches no projection; Ember puts adapters on {} (or \"all-linear\")",
                            PROJECTIONS.join(", ")
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

fn first_match<T: Copy>(patterns: &[(Regex, T)], path: &str) -> Option<T> {
    patterns.iter().find(|(re, _)| re.is_match(path)).map(|(_, v)| *v)
}

fn compile(key: &str, pattern: &str) -> Result<Regex> {
    Regex::new(pattern).map_err(|e| LoraError::Config {
        path: "adapter_config.json".into(),
        key: key.to_string(),
        message: format!("not a valid pattern: {e}"),
    })
}
