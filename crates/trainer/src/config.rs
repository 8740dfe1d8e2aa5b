//! The TOML run config of `ember train`: `[model]`, `[lora]` (PEFT's names), `[data]` and
//! `[training]` (transformers' `TrainingArguments` names). Unknown keys are errors.

use std::path::{Path, PathBuf};

use ember_data::DataConfig;
use ember_lora::LoraConfig;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::schedule::ScheduleKind;

/// A whole run config, as read from the file.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub model: ModelSection,
    pub lora: LoraConfig,
    pub data: DataConfig,
    pub training: TrainingArgs,
    /// The file's text with every default filled in, saved beside the checkpoints.
    pub resolved: toml::Table,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json), or a GGUF
    /// file (dequantized at load; its embedded tokenizer is used).
    pub path: PathBuf,
}

/// Which optimizer (`optim`, transformers' names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OptimKind {
    /// PyTorch AdamW, f32 moments (8 bytes of state per trainable parameter).
    #[serde(rename = "adamw_torch")]
    AdamW,
    /// bitsandbytes AdamW8bit, block-wise 8-bit moments (~2 bytes per parameter).
    #[serde(rename = "adamw_8bit")]
    AdamW8bit,
}

/// The `[training]` table. Defaults are transformers' unless a comment says otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingArgs {
    #[serde(default = "defaults::output_dir")]
    pub output_dir: PathBuf,
    /// Start a fresh run even though `output_dir` holds another run's checkpoints, deleting
    /// them; without it such a run is refused (a run owns its output directory).
    #[serde(default)]
    pub overwrite_output_dir: bool,
    #[serde(default = "defaults::batch_size")]
    pub per_device_train_batch_size: usize,
    #[serde(default = "defaults::one")]
    pub gradient_accumulation_steps: usize,
    /// Optimizer steps to run; takes precedence over `num_train_epochs` when set.
    #[serde(default)]
    pub max_steps: Option<usize>,
    #[serde(default = "defaults::epochs")]
    pub num_train_epochs: f64,
    #[serde(default = "defaults::learning_rate")]
    pub learning_rate: f64,
    #[serde(default = "defaults::schedule")]
    pub lr_scheduler_type: ScheduleKind,
    #[serde(default)]
    pub warmup_steps: usize,
    /// Used when `warmup_steps` is 0.
    #[serde(default)]
    pub warmup_ratio: f64,
    /// Default `adamw_torch`; the seed uses `adamw_8bit`.
    #[serde(default = "defaults::optim")]
    pub optim: OptimKind,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "defaults::beta1")]
    pub adam_beta1: f64,
    #[serde(default = "defaults::beta2")]
    pub adam_beta2: f64,
    #[serde(default = "defaults::epsilon")]
    pub adam_epsilon: f64,
    /// Global gradient-norm clipping; 0 disables it.
    #[serde(default = "defaults::max_grad_norm")]
    pub max_grad_norm: f64,
    /// Recompute each decoder layer in the backward instead of storing its activations.
    /// Default true, as in the seed (transformers' default is false).
    #[serde(default = "defaults::yes")]
    pub gradient_checkpointing: bool,
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    #[serde(default = "defaults::one")]
    pub logging_steps: usize,
    /// Save a checkpoint every this many steps (and at the end); 0: only at the end.
    #[serde(default)]
    pub save_steps: usize,
    /// Keep at most this many checkpoints, deleting the oldest; unset keeps all.
    #[serde(default)]
    pub save_total_limit: Option<usize>,
    /// Evaluate every this many steps when there is an eval split; 0: only at the end.
    #[serde(default)]
    pub eval_steps: usize,
    /// Pad each batch to a multiple of this many tokens (the padding is masked and carries no
    /// loss). Default 64: on GPUs every new sequence length compiles and tunes kernels again;
    /// set 1 on a CPU to save the padding's compute.
    #[serde(default = "defaults::pad_multiple")]
    pub pad_to_multiple_of: usize,
}

mod defaults {
    use super::*;
    pub fn output_dir() -> PathBuf {
        PathBuf::from("outputs")
    }
    pub fn batch_size() -> usize {
        8
    }
    pub fn one() -> usize {
        1
    }
    pub fn epochs() -> f64 {
        3.0
    }
    pub fn learning_rate() -> f64 {
        5e-5
    }
    pub fn schedule() -> ScheduleKind {
        ScheduleKind::Linear
    }
    pub fn optim() -> OptimKind {
        OptimKind::AdamW
    }
    pub fn beta1() -> f64 {
        0.9
    }
    pub fn beta2() -> f64 {
        0.999
    }
    pub fn epsilon() -> f64 {
        1e-8
    }
    pub fn max_grad_norm() -> f64 {
        1.0
    }
    pub fn yes() -> bool {
        true
    }
    pub fn seed() -> u64 {
        42
    }
    pub fn pad_multiple() -> usize {
        64
    }
}

const SECTIONS: &[&str] = &["model", "lora", "data", "training"];

impl RunConfig {
    /// Reads a run config file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses the TOML text of a run config; `path` is used in messages and to resolve
    /// relative paths in the file against the directory the command runs in.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| TrainError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_table(table, path)
    }

    pub fn from_table(table: toml::Table, path: &Path) -> Result<Self> {
        let config_error = |message: String| TrainError::Config {
            path: path.to_path_buf(),
            message,
        };
        for key in table.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                return Err(config_error(format!(
                    "unknown section `[{key}]`{}; sections are [model], [lora], [data], [training]",
                    suggestion(key, SECTIONS)
                )));
            }
        }
        let section = |name: &str| {
            table
                .get(name)
                .cloned()
                .unwrap_or(toml::Value::Table(toml::Table::new()))
        };
        let model: ModelSection = section("model")
            .try_into()
            .map_err(|e: toml::de::Error| config_error(format!("[model]: {}", e.message())))?;
        let data: DataConfig = section("data")
            .try_into()
            .map_err(|e: toml::de::Error| config_error(format!("[data]: {}", e.message())))?;
        let training: TrainingArgs = section("training")
            .try_into()
            .map_err(|e: toml::de::Error| config_error(format!("[training]: {}", e.message())))?;
        let lora_json: serde_json::Value =
            serde_json::to_value(section("lora")).map_err(|e| config_error(format!("[lora]: {e}")))?;
        let lora = LoraConfig::from_json(&lora_json, path, true)?;
        Self::from_parts(model, lora, data, training, path)
    }

    /// A run config built in code instead of read from a file, checked as a file is.
    ///
    /// ```no_run
    /// use ember_data::DataConfig;
    /// use ember_lora::LoraConfig;
    /// use ember_trainer::config::{RunConfig, TrainingArgs};
    ///
    /// # fn main() -> ember_trainer::Result<()> {
    /// let training = TrainingArgs {
    ///     max_steps: Some(10),
    ///     ..TrainingArgs::default()
    /// };
    /// let config = RunConfig::new("models/gemma-2b-it", LoraConfig::seed_recipe(), DataConfig::new("train.jsonl"), training)?;
    /// # Ok(()) }
    /// ```
    pub fn new(
        model_path: impl Into<PathBuf>,
        lora: LoraConfig,
        data: DataConfig,
        training: TrainingArgs,
    ) -> Result<Self> {
        let model = ModelSection {
            path: model_path.into(),
        };
        Self::from_parts(model, lora, data, training, Path::new("(run config built in code)"))
    }

    fn from_parts(
        model: ModelSection,
        lora: LoraConfig,
        data: DataConfig,
        training: TrainingArgs,
        path: &Path,
    ) -> Result<Self> {
        training.validate(path)?;

        let mut resolved = toml::Table::new();
        resolved.insert("model".into(), to_toml(&model, path)?);
        resolved.insert("lora".into(), toml_from_json(lora.to_json()));
        resolved.insert("data".into(), to_toml(&data, path)?);
        resolved.insert("training".into(), to_toml(&training, path)?);
        Ok(Self {
            model,
            lora,
            data,
            training,
            resolved,
        })
    }
}

impl Default for TrainingArgs {
    /// Every key at its default, as an empty `[training]` table gives.
    fn default() -> Self {
        // Deserialising nothing applies the serde defaults above: one list of defaults, not two.
        toml::Table::new()
            .try_into()
            .expect("every [training] key has a default")
    }
}

impl TrainingArgs {
    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, message: &str| {
            Err(TrainError::Config {
                path: path.to_path_buf(),
                message: format!("[training] {key}: {message}"),
            })
        };
        if self.per_device_train_batch_size == 0 {
            return bad("per_device_train_batch_size", "must be at least 1");
        }
        if self.gradient_accumulation_steps == 0 {
            return bad("gradient_accumulation_steps", "must be at least 1");
        }
        if self.max_steps == Some(0) || (self.max_steps.is_none() && self.num_train_epochs <= 0.0) {
            return bad(
                "max_steps",
                "nothing to train: set max_steps or num_train_epochs above 0",
            );
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad("warmup_ratio", "must be in [0, 1)");
        }
        Ok(())
    }
}

/// ` (did you mean `x`?)` for the known name closest to `key`, if any is close.
pub fn suggestion(key: &str, known: &[&str]) -> String {
    known
        .iter()
        .map(|k| (edit_distance(key, k), k))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = (previous + usize::from(ca != *cb)).min(row[j] + 1).min(row[j + 1] + 1);
            previous = current;
        }
    }
    row[b.len()]
}

fn to_toml<T: Serialize>(value: &T, path: &Path) -> Result<toml::Value> {
    toml::Value::try_from(value).map_err(|e| TrainError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn toml_from_json(value: serde_json::Value) -> toml::Value {
    match value {
        serde_json::Value::Null => toml::Value::String("null".into()),
        serde_json::Value::Bool(b) => toml::Value::Boolean(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => toml::Value::String(s),
        serde_json::Value::Array(items) => toml::Value::Array(items.into_iter().map(toml_from_json).collect()),
        serde_json::Value::Object(map) => toml::Value::Table(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, toml_from_json(v)))
                .collect(),
        ),
    }
}
