//! `adapter_config.json`: the LoRA settings, in the format PEFT reads and writes.

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::error::{LoraError, Result};

/// The projections of a Gemma decoder layer that can carry an adapter.
pub const PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Which modules get an adapter (PEFT's `target_modules`).
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// Module names, matched against the end of each module path.
    Names(Vec<String>),
    /// A regular expression that must match a whole module path.
    Regex(String),
    /// Every linear layer but the output head: the seven projections.
    AllLinear,
}

/// How A and B start (PEFT's `init_lora_weights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// `true`: A kaiming-uniform (a = √5), B zero, so the adapter starts as a no-op.
    Default,
    /// `"gaussian"`: A normal with std 1/r, B zero.
    Gaussian,
    /// `false`: both kaiming-uniform, so the adapter starts non-zero (for tests).
    Random,
}

/// A LoRA adapter's settings. Field names are PEFT's.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: Targets,
    /// Parameters adapted directly, PEFT's way for Gemma 4's 3-D expert weights: paths or their
    /// ends (`experts.gate_up_proj`, `experts.down_proj`, `model.layers.3.experts.down_proj`).
    pub target_parameters: Vec<String>,
    /// Scale by `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
    pub init_lora_weights: Init,
    /// Per-module rank overrides; keys match the end of a module path (PEFT's rule), first match wins.
    pub rank_pattern: Vec<(String, usize)>,
    /// Per-module alpha overrides, matched like `rank_pattern`.
    pub alpha_pattern: Vec<(String, f64)>,
    /// Only these decoder layers get adapters (`None`: all).
    pub layers_to_transform: Option<Vec<usize>>,
    /// Where the base model came from; informational, as in PEFT.
    pub base_model_name_or_path: Option<String>,
}

/// PEFT's `target_modules` when none are named, for every Gemma architecture (its
/// `TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`).
const PEFT_DEFAULT_TARGETS: [&str; 2] = ["q_proj", "v_proj"];

impl Default for LoraConfig {
    /// PEFT's `LoraConfig()` on a Gemma model: r = 8, alpha = 8, no dropout, `q_proj` and
    /// `v_proj`; what a `[lora]` table or `adapter_config.json` without those keys gives.
    fn default() -> Self {
        Self {
            r: 8,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            target_modules: Targets::Names(PEFT_DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect()),
            target_parameters: Vec::new(),
            use_rslora: false,
            init_lora_weights: Init::Default,
            rank_pattern: Vec::new(),
            alpha_pattern: Vec::new(),
            layers_to_transform: None,
            base_model_name_or_path: None,
        }
    }
}

/// Keys PEFT writes that do not change how a LoRA adapter computes, once loaded.
const DESCRIPTIVE_KEYS: &[&str] = &[
    "peft_type",
    "task_type",
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    "auto_mapping",
    "megatron_config",
    "megatron_core",
    "loftq_config",
    "eva_config",
    "corda_config",
    "qalora_group_size",
    "ensure_weight_tying",
    "peft_version",
    "runtime_config",
    "layers_pattern",
];

impl LoraConfig {
    /// The seed recipe's adapter: r = 16, alpha = 16, no dropout, all seven projections.
    pub fn seed_recipe() -> Self {
        Self {
            r: 16,
            lora_alpha: 16.0,
            target_modules: Targets::Names(PROJECTIONS.iter().map(|s| s.to_string()).collect()),
            ..Self::default()
        }
    }

    /// Reads an `adapter_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| LoraError::io(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|source| LoraError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&value, path, false)
    }

    /// Reads the settings from a JSON value (`adapter_config.json`, or the `[lora]` table of a
    /// run config); `source` names it in messages. `strict` makes a key Ember does not know
    /// an error instead of a warning: right for a config a user writes, wrong for files
    /// newer PEFT releases write.
    pub fn from_json(value: &Value, source: &Path, strict: bool) -> Result<Self> {
        let Value::Object(map) = value else {
            return Err(Reader {
                map: &Map::new(),
                path: source,
                strict,
            }
            .error("(root)", "expected a table of settings"));
        };
        Reader {
            map,
            path: source,
            strict,
        }
        .config()
    }

    /// The `adapter_config.json` PEFT would write for this adapter.
    pub fn to_json(&self) -> Value {
        let targets = match &self.target_modules {
            Targets::Names(names) => json!(names),
            Targets::Regex(regex) => json!(regex),
            Targets::AllLinear => json!("all-linear"),
        };
        let init = match self.init_lora_weights {
            Init::Default => json!(true),
            Init::Gaussian => json!("gaussian"),
            Init::Random => json!(false),
        };
        let ranks: Map<String, Value> = self.rank_pattern.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        let alphas: Map<String, Value> = self.alpha_pattern.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        json!({
            "alpha_pattern": alphas,
            "base_model_name_or_path": self.base_model_name_or_path,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": init,
            "layers_pattern": null,
            "layers_to_transform": self.layers_to_transform,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": self.r,
            "rank_pattern": ranks,
            "revision": null,
            "target_modules": targets,
            "target_parameters": (!self.target_parameters.is_empty()).then_some(&self.target_parameters),
            "task_type": "CAUSAL_LM",
            "use_dora": false,
            "use_rslora": self.use_rslora,
        })
    }
}

/// An `adapter_config.json` being read, with its path for messages.
struct Reader<'a> {
    map: &'a Map<String, Value>,
    path: &'a Path,
    strict: bool,
}

impl Reader<'_> {
    fn error(&self, key: &str, message: impl Into<String>) -> LoraError {
        LoraError::Config {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn number(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| self.error(key, format!("expected a number, found {v}")))
            })
            .transpose()
    }

    fn bool(&self, key: &str) -> Result<bool> {
        match self.get(key) {
            None => Ok(false),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.error(key, format!("expected true or false, found {v}"))),
        }
    }

    /// Refuses `key` unless it is absent, null, false or empty: a feature Ember does not apply.
    fn refuse_if_set(&self, key: &str, why: &str) -> Result<()> {
        let set = match self.get(key) {
            None | Some(Value::Bool(false)) => false,
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Object(o)) => !o.is_empty(),
            Some(Value::String(s)) => s != "none",
            Some(_) => true,
        };
        if set {
            return Err(self.error(key, why));
        }
        Ok(())
    }

    fn config(&self) -> Result<LoraConfig> {
        match self.get("peft_type").and_then(Value::as_str) {
            None | Some("LORA") => {}
            Some(other) => {
                return Err(self.error(
                    "peft_type",
                    format!("`{other}` adapters are not supported; Ember applies LORA"),
                ));
            }
        }
        self.refuse_if_set(
            "use_dora",
            "DoRA adapters are not supported; train a plain LoRA adapter",
        )?;
        self.refuse_if_set("bias", "only bias = \"none\" is supported")?;
        self.refuse_if_set(
            "fan_in_fan_out",
            "fan_in_fan_out is for GPT-2-style Conv1D layers, which Gemma has none of",
        )?;
        self.refuse_if_set(
            "modules_to_save",
            "fully trained extra modules (modules_to_save) are not supported",
        )?;
        self.refuse_if_set("layer_replication", "layer replication is not supported")?;
        self.refuse_if_set("lora_bias", "LoRA biases are not supported")?;
        self.refuse_if_set(
            "exclude_modules",
            "exclude_modules is not supported; list target_modules instead",
        )?;
        self.refuse_if_set(
            "trainable_token_indices",
            "trainable token embeddings are not supported",
        )?;
        self.refuse_if_set("use_qalora", "QA-LoRA is not supported")?;
        self.refuse_if_set("alora_invocation_tokens", "activated LoRA is not supported")?;
        self.refuse_if_set("arrow_config", "Arrow routing is not supported")?;
        if let Some(pattern) = self.get("layers_pattern").and_then(Value::as_str)
            && pattern != "layers"
        {
            return Err(self.error("layers_pattern", format!("`{pattern}`: Gemma's layers are `layers`")));
        }
        for key in self.map.keys() {
            let used = [
                "r",
                "lora_alpha",
                "lora_dropout",
                "target_modules",
                "target_parameters",
                "use_rslora",
                "init_lora_weights",
                "rank_pattern",
                "alpha_pattern",
                "layers_to_transform",
                "use_dora",
                "bias",
                "fan_in_fan_out",
                "modules_to_save",
                "layer_replication",
                "lora_bias",
                "exclude_modules",
                "trainable_token_indices",
                "use_qalora",
                "alora_invocation_tokens",
                "arrow_config",
            ];
            // Newer PEFT releases write every option they know, unset ones as null/false.
            let unset = matches!(self.map.get(key), Some(Value::Null | Value::Bool(false)));
            let known = used.contains(&key.as_str()) || DESCRIPTIVE_KEYS.contains(&key.as_str());
            if self.strict && !known {
                return Err(self.error(key, format!("unknown setting; known ones: {}", used[..10].join(", "))));
            }
            if !unset && !known {
                tracing::warn!("{}: key `{key}` is not used by Ember", self.path.display());
            }
        }

        let r = self
            .get("r")
            .map(|v| {
                v.as_u64()
                    .filter(|&r| r > 0)
                    .ok_or_else(|| self.error("r", format!("expected a positive integer, found {v}")))
            })
            .transpose()?
            .map_or(LoraConfig::default().r, |r| r as usize);
        let config = LoraConfig {
            r,
            lora_alpha: self.number("lora_alpha")?.unwrap_or(LoraConfig::default().lora_alpha),
            lora_dropout: self
                .number("lora_dropout")?
                .unwrap_or(LoraConfig::default().lora_dropout),
            target_modules: self.targets()?,
            target_parameters: self.names("target_parameters")?,
            use_rslora: self.bool("use_rslora")?,
            init_lora_weights: self.init()?,
            rank_pattern: self.pattern("rank_pattern", |v| v.as_u64().filter(|&r| r > 0).map(|r| r as usize))?,
            alpha_pattern: self.pattern("alpha_pattern", Value::as_f64)?,
            layers_to_transform: self.layers()?,
            base_model_name_or_path: self
                .get("base_model_name_or_path")
                .and_then(Value::as_str)
                .map(String::from),
        };
        if !(0.0..1.0).contains(&config.lora_dropout) {
            let message = format!("{} is out of range: must be in [0, 1)", config.lora_dropout);
            return Err(self.error("lora_dropout", message));
        }
        // A zero or negative alpha silences or flips the adapter: never what a run means.
        let alphas = std::iter::once(("lora_alpha".to_owned(), config.lora_alpha));
        let patterns = config
            .alpha_pattern
            .iter()
            .map(|(k, a)| (format!("alpha_pattern.{k}"), *a));
        if let Some((key, alpha)) = alphas.chain(patterns).find(|(_, a)| !(a.is_finite() && *a > 0.0)) {
            return Err(self.error(&key, format!("{alpha} is out of range: must be a number above 0")));
        }
        Ok(config)
    }

    fn targets(&self) -> Result<Targets> {
        match self.get("target_modules") {
            // PEFT leaves the modules alone when only parameters are named (its table of default
            // modules has no text Gemma 3n or 4, the models with experts).
            None if self.get("target_parameters").is_some() => Ok(Targets::Names(Vec::new())),
            None => Ok(LoraConfig::default().target_modules),
            Some(Value::String(s)) if s == "all-linear" => Ok(Targets::AllLinear),
            Some(Value::String(s)) => Ok(Targets::Regex(s.clone())),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(String::from)
                        .ok_or_else(|| self.error("target_modules", format!("expected module names, found {v}")))
                })
                .collect::<Result<Vec<_>>>()
                .map(Targets::Names),
            Some(v) => Err(self.error(
                "target_modules",
                format!("expected a list of names or a regex, found {v}"),
            )),
        }
    }

    /// A list of names (absent: none).
    fn names(&self, key: &str) -> Result<Vec<String>> {
        let bad = |v: &Value| self.error(key, format!("expected a list of names, found {v}"));
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(String::from).ok_or_else(|| bad(v)))
                .collect(),
            Some(v) => Err(bad(v)),
        }
    }

    fn init(&self) -> Result<Init> {
        match self.map.get("init_lora_weights") {
            None | Some(Value::Null) | Some(Value::Bool(true)) => Ok(Init::Default),
            Some(Value::Bool(false)) => Ok(Init::Random),
            Some(Value::String(s)) if s == "gaussian" => Ok(Init::Gaussian),
            // PiSSA, OLoRA and friends also rewrite the base weights: the adapter alone is not enough.
            Some(v) => Err(self.error(
                "init_lora_weights",
                format!("{v} is not supported; expected true, false or \"gaussian\""),
            )),
        }
    }

    fn pattern<T>(&self, key: &str, parse: impl Fn(&Value) -> Option<T>) -> Result<Vec<(String, T)>> {
        let Some(value) = self.get(key) else {
            return Ok(Vec::new());
        };
        let map = value.as_object().ok_or_else(|| self.error(key, "expected an object"))?;
        map.iter()
            .map(|(k, v)| {
                let parsed = parse(v).ok_or_else(|| self.error(&format!("{key}.{k}"), format!("invalid value {v}")))?;
                Ok((k.clone(), parsed))
            })
            .collect()
    }

    fn layers(&self) -> Result<Option<Vec<usize>>> {
        let bad = |v: &Value| {
            self.error(
                "layers_to_transform",
                format!("expected a layer index or a list, found {v}"),
            )
        };
        match self.get("layers_to_transform") {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_u64().map(|n| n as usize).ok_or_else(|| bad(v)))
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => v.as_u64().map(|n| Some(vec![n as usize])).ok_or_else(|| bad(v)),
        }
    }
}
