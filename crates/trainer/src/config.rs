//! The TOML run config of `ember train`: `[model]`, `[lora]` (PEFT's names, and `init_from`), `[data]` and
//! `[training]` (transformers' `TrainingArguments` names). Unknown keys are errors.

use std::path::{Path, PathBuf};

use burn::tensor::DType;
use ember_data::DataConfig;
use ember_lora::LoraConfig;
use ember_model::bnb::{FourBitConfig, QuantType};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::init_from;
use crate::schedule::ScheduleKind;

/// A whole run config, as read from the file.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub model: ModelSection,
    pub lora: LoraConfig,
    /// `[lora] init_from`: a PEFT adapter directory the run starts from (then `lora` is that
    /// adapter's config, the run's `lora_dropout` aside).
    pub init_from: Option<PathBuf>,
    pub data: DataConfig,
    pub training: TrainingArgs,
    /// The file's text with every default filled in, saved beside the checkpoints.
    pub resolved: toml::Table,
    /// Where the config came from, for messages.
    pub file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json), or a GGUF
    /// file (dequantized at load; its embedded tokenizer is used).
    pub path: PathBuf,
    /// QLoRA: the base projections held in bitsandbytes' 4-bit format, as transformers'
    /// `BitsAndBytesConfig(load_in_4bit=True)` loads them. The defaults of the `bnb_4bit_*`
    /// keys below are QLoRA's (and Unsloth's), not transformers' (`fp4`, no double quantization).
    #[serde(default)]
    pub load_in_4bit: bool,
    /// `"nf4"` or `"fp4"`.
    #[serde(default = "defaults::quant_type")]
    pub bnb_4bit_quant_type: String,
    /// Quantize the blocks' absmax too (saves ~0.4 bits per weight).
    #[serde(default = "defaults::yes")]
    pub bnb_4bit_use_double_quant: bool,
    /// The dtype 4-bit layers compute in: the run's dtype (`--dtype`), which this may only
    /// repeat ("bfloat16", "float16", "float32").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bnb_4bit_compute_dtype: Option<String>,
    /// Modules kept in full precision (transformers' patterns); by default the LM head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_int8_skip_modules: Option<Vec<String>>,
}

impl ModelSection {
    /// A model at `path`, loaded as stored.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            load_in_4bit: false,
            bnb_4bit_quant_type: defaults::quant_type(),
            bnb_4bit_use_double_quant: true,
            bnb_4bit_compute_dtype: None,
            llm_int8_skip_modules: None,
        }
    }

    /// How to load in 4 bits, if at all, for a run in `dtype` (any, if not given); `file` names
    /// the config in errors.
    pub fn four_bit(&self, dtype: Option<DType>, file: &Path) -> Result<Option<FourBitConfig>> {
        let error = |key: &str, message: String| TrainError::Config {
            path: file.to_path_buf(),
            message: format!("[model] {key}: {message}"),
        };
        let quant_type: QuantType = self
            .bnb_4bit_quant_type
            .parse()
            .map_err(|e| error("bnb_4bit_quant_type", e))?;
        if let Some(compute) = &self.bnb_4bit_compute_dtype {
            let expected = match dtype {
                None => compute.as_str(),
                Some(DType::BF16) => "bfloat16",
                Some(DType::F16) => "float16",
                Some(_) => "float32",
            };
            if !["bfloat16", "float16", "float32"].contains(&compute.as_str()) {
                return Err(error(
                    "bnb_4bit_compute_dtype",
                    format!("`{compute}` is not a dtype: use \"bfloat16\", \"float16\" or \"float32\""),
                ));
            }
            if compute != expected {
                return Err(error(
                    "bnb_4bit_compute_dtype",
                    format!(
                        "`{compute}`, but the run computes in {expected}: 4-bit layers compute in the run's dtype; \
                         remove the key or run with --dtype {}",
                        if compute == "float32" {
                            "f32"
                        } else if compute == "float16" {
                            "f16"
                        } else {
                            "bf16"
                        }
                    ),
                ));
            }
        }
        let config = FourBitConfig {
            quant_type,
            double_quant: self.bnb_4bit_use_double_quant,
            skip_modules: self.llm_int8_skip_modules.clone(),
        };
        if let Some((pattern, problem)) = config.invalid_pattern() {
            return Err(error(
                "llm_int8_skip_modules",
                format!("`{pattern}` is not a valid pattern: {problem}"),
            ));
        }
        Ok(self.load_in_4bit.then_some(config))
    }
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
    /// With checkpointing, keep each decoder layer's input in host memory between its forward
    /// and its backward instead of on the device (Unsloth's "unsloth" checkpointing): `true`,
    /// `false` or `"auto"` (the default: only when the run would not fit otherwise, where the
    /// device's free memory is known). On CUDA the copies run beside the compute; elsewhere
    /// they wait for it.
    #[serde(default)]
    pub offload_activations: Offload,
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
    /// Seconds a rank of a data-parallel run waits for the others at each gradient sum before
    /// the run fails (transformers' `ddp_timeout`).
    #[serde(default = "defaults::ddp_timeout")]
    pub ddp_timeout: u64,
    /// How the ranks of a data-parallel run sum their gradients (transformers' `ddp_backend`):
    /// `"nccl"` between GPUs, `"tcp"` through rank 0 over TCP (any device). Unset: NCCL on
    /// CUDA devices, TCP elsewhere.
    #[serde(default)]
    pub ddp_backend: Option<DdpBackend>,
}

/// `ddp_backend`: `"nccl"` or `"tcp"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DdpBackend {
    Nccl,
    Tcp,
}

/// `offload_activations`: `true`, `false` or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Offload {
    Off,
    On,
    #[default]
    Auto,
}

impl Serialize for Offload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Off => s.serialize_bool(false),
            Self::On => s.serialize_bool(true),
            Self::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for Offload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Word(String),
        }
        match Raw::deserialize(d) {
            Ok(Raw::Bool(on)) => Ok(if on { Self::On } else { Self::Off }),
            Ok(Raw::Word(w)) if w == "auto" => Ok(Self::Auto),
            _ => Err(serde::de::Error::custom(
                "expected true, false or \"auto\" (offload only when the run would not fit)",
            )),
        }
    }
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
    pub fn ddp_timeout() -> u64 {
        crate::distributed::DEFAULT_TIMEOUT.as_secs()
    }
    pub fn quant_type() -> String {
        "nf4".into()
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
            .map_err(|e| config_error(section_error("model", &e)))?;
        let data: DataConfig = section("data")
            .try_into()
            .map_err(|e| config_error(section_error("data", &e)))?;
        let training: TrainingArgs = section("training")
            .try_into()
            .map_err(|e| config_error(section_error("training", &e)))?;
        let mut lora_table = section("lora");
        let init_from = match lora_table.as_table_mut().and_then(|t| t.remove("init_from")) {
            Some(value) => Some(init_from::path(&value).map_err(|e| config_error(format!("[lora] init_from: {e}")))?),
            None => None,
        };
        let explicit: Vec<String> = lora_table
            .as_table()
            .map_or_else(Vec::new, |t| t.keys().cloned().collect());
        let lora_json: serde_json::Value =
            serde_json::to_value(lora_table).map_err(|e| config_error(format!("[lora]: {e}")))?;
        let mut lora = LoraConfig::from_json(&lora_json, path, true).map_err(|e| match e {
            ember_lora::LoraError::Config { key, message, .. } => config_error(format!("[lora] {key}: {message}")),
            other => other.into(),
        })?;
        if let Some(dir) = &init_from {
            lora = init_from::adapter_config(dir, &lora, &explicit).map_err(config_error)?;
        }
        Self::from_parts(model, lora, init_from, data, training, path)
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
        let model = ModelSection::new(model_path);
        Self::from_parts(
            model,
            lora,
            None,
            data,
            training,
            Path::new("(run config built in code)"),
        )
    }

    fn from_parts(
        model: ModelSection,
        lora: LoraConfig,
        init_from: Option<PathBuf>,
        data: DataConfig,
        training: TrainingArgs,
        path: &Path,
    ) -> Result<Self> {
        training.validate(path)?;
        data.validate()?;
        // Every 4-bit key checked now; whether the compute dtype is the run's, at the start.
        model.four_bit(None, path)?;

        let mut resolved = toml::Table::new();
        resolved.insert("model".into(), to_toml(&model, path)?);
        let mut lora_resolved = toml_from_json(lora.to_json());
        if let (Some(dir), Some(table)) = (&init_from, lora_resolved.as_table_mut()) {
            table.insert("init_from".into(), toml::Value::String(dir.display().to_string()));
        }
        resolved.insert("lora".into(), lora_resolved);
        resolved.insert("data".into(), to_toml(&data, path)?);
        resolved.insert("training".into(), to_toml(&training, path)?);
        Ok(Self {
            model,
            lora,
            init_from,
            data,
            training,
            resolved,
            file: path.to_path_buf(),
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
    /// Refuses a value outside its valid range, naming the key, the value and the range
    /// (serde checks only the types: a negative learning rate would climb the loss).
    fn validate(&self, path: &Path) -> Result<()> {
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let non_negative = |x: f64| x.is_finite() && x >= 0.0;
        let fraction = |x: f64| (0.0..1.0).contains(&x);
        let epochs_range = match self.max_steps {
            None => "a number above 0 (or set max_steps)",
            Some(_) => "a number of at least 0 (max_steps decides the length)",
        };
        let checks: [(&str, String, bool, &str); 15] = [
            (
                "per_device_train_batch_size",
                self.per_device_train_batch_size.to_string(),
                self.per_device_train_batch_size >= 1,
                "at least 1",
            ),
            (
                "gradient_accumulation_steps",
                self.gradient_accumulation_steps.to_string(),
                self.gradient_accumulation_steps >= 1,
                "at least 1",
            ),
            (
                "max_steps",
                self.max_steps.unwrap_or(1).to_string(),
                self.max_steps != Some(0),
                "at least 1 (or left out to train num_train_epochs)",
            ),
            (
                "num_train_epochs",
                self.num_train_epochs.to_string(),
                positive(self.num_train_epochs) || (self.max_steps.is_some() && non_negative(self.num_train_epochs)),
                epochs_range,
            ),
            (
                "learning_rate",
                self.learning_rate.to_string(),
                positive(self.learning_rate),
                "a number above 0, e.g. 2e-4",
            ),
            (
                "warmup_ratio",
                self.warmup_ratio.to_string(),
                fraction(self.warmup_ratio),
                "in [0, 1)",
            ),
            (
                "weight_decay",
                self.weight_decay.to_string(),
                non_negative(self.weight_decay),
                "a number of at least 0",
            ),
            (
                "adam_beta1",
                self.adam_beta1.to_string(),
                fraction(self.adam_beta1),
                "in [0, 1)",
            ),
            (
                "adam_beta2",
                self.adam_beta2.to_string(),
                fraction(self.adam_beta2),
                "in [0, 1)",
            ),
            (
                "adam_epsilon",
                self.adam_epsilon.to_string(),
                positive(self.adam_epsilon),
                "a number above 0, e.g. 1e-8",
            ),
            (
                "max_grad_norm",
                self.max_grad_norm.to_string(),
                non_negative(self.max_grad_norm),
                "a number of at least 0 (0 turns clipping off)",
            ),
            (
                "logging_steps",
                self.logging_steps.to_string(),
                self.logging_steps >= 1,
                "at least 1",
            ),
            (
                "save_total_limit",
                format!("{}", self.save_total_limit.unwrap_or(1)),
                self.save_total_limit != Some(0),
                "at least 1 (or left out to keep every checkpoint)",
            ),
            (
                "pad_to_multiple_of",
                self.pad_to_multiple_of.to_string(),
                self.pad_to_multiple_of >= 1,
                "at least 1 (1: no padding beyond the longest sample)",
            ),
            (
                "ddp_timeout",
                self.ddp_timeout.to_string(),
                self.ddp_timeout >= 1,
                "at least 1 (seconds)",
            ),
        ];
        match checks.into_iter().find(|(_, _, ok, _)| !ok) {
            Some((key, value, _, range)) => Err(TrainError::Config {
                path: path.to_path_buf(),
                message: format!("[training] {key} = {value}: must be {range}"),
            }),
            None => Ok(()),
        }
    }
}

/// `[table] key: what is wrong` for a table of the config that did not deserialize. toml names
/// the key path (`columns.instruction` in `[data]`) only in its error's text, as a line
/// ``in `columns.instruction` ``; `message()` leaves it out.
fn section_error(section: &str, error: &toml::de::Error) -> String {
    let text = error.to_string();
    let keys = text
        .lines()
        .find_map(|line| line.strip_prefix("in `")?.strip_suffix('`'));
    match keys.and_then(|keys| keys.rsplit_once('.').or(Some(("", keys)))) {
        Some(("", key)) => format!("[{section}] {key}: {}", error.message()),
        Some((tables, key)) => format!("[{section}.{tables}] {key}: {}", error.message()),
        None => format!("[{section}]: {}", error.message()),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The error of a run config whose `[section]` holds `line` (the other sections valid).
    fn error_with(section: &str, line: &str) -> String {
        let mut text = String::new();
        for (name, body) in [
            ("model", "path = \"m\""),
            ("data", "path = \"d.jsonl\""),
            ("lora", ""),
            ("training", ""),
        ] {
            let extra = if name == section { line } else { "" };
            text += &format!("[{name}]\n{body}\n{extra}\n");
        }
        match RunConfig::parse(&text, Path::new("run.toml")) {
            Ok(_) => panic!("[{section}] {line} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn type_errors_name_the_table_and_the_key() {
        let cases = [
            (
                "training",
                "per_device_train_batch_size = \"twelve\"",
                "[training] per_device_train_batch_size: invalid type: string \"twelve\", expected usize",
            ),
            (
                "training",
                "lr_scheduler_type = \"cosin\"",
                "[training] lr_scheduler_type: unknown variant `cosin`",
            ),
            (
                "data",
                "columns = { instruction = 5 }",
                "[data.columns] instruction: invalid type: integer `5`",
            ),
            (
                "data",
                "max_seq_length = 1.5",
                "[data] max_seq_length: invalid type: floating point `1.5`",
            ),
            (
                "lora",
                "r = \"sixteen\"",
                "[lora] r: expected a positive integer, found \"sixteen\"",
            ),
        ];
        for (section, line, expected) in cases {
            let err = error_with(section, line);
            assert!(err.contains(expected), "{line}: {err}");
            assert!(err.starts_with("`run.toml`"), "the file is named: {err}");
        }
        let err = RunConfig::parse("[model]\npath = 7\n[data]\npath = \"d\"\n", Path::new("run.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[model] path: invalid type: integer `7`"), "{err}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = error_with("training", "learning_rate = = 1e-4");
        // [model], its path, a blank line, [data], its path, a blank line, [lora], two blank
        // lines, [training], a blank line: the bad line is the 12th.
        assert!(err.contains("line 12"), "{err}");
        assert!(err.contains("learning_rate = = 1e-4"), "the line is quoted: {err}");
    }

    #[test]
    fn values_out_of_range_are_refused_with_the_value_and_the_range() {
        let cases = [
            (
                "training",
                "learning_rate = -1e-4",
                "[training] learning_rate = -0.0001: must be a number above 0",
            ),
            (
                "training",
                "learning_rate = nan",
                "[training] learning_rate = NaN: must be",
            ),
            (
                "training",
                "per_device_train_batch_size = 0",
                "[training] per_device_train_batch_size = 0: must be at least 1",
            ),
            (
                "training",
                "gradient_accumulation_steps = 0",
                "gradient_accumulation_steps = 0: must be at least 1",
            ),
            (
                "training",
                "max_steps = 0",
                "[training] max_steps = 0: must be at least 1",
            ),
            (
                "training",
                "num_train_epochs = -1.0",
                "[training] num_train_epochs = -1: must be a number above 0",
            ),
            (
                "training",
                "warmup_ratio = 1.5",
                "[training] warmup_ratio = 1.5: must be in [0, 1)",
            ),
            (
                "training",
                "weight_decay = -0.01",
                "[training] weight_decay = -0.01: must be a number of at least 0",
            ),
            (
                "training",
                "adam_beta1 = 1.0",
                "[training] adam_beta1 = 1: must be in [0, 1)",
            ),
            (
                "training",
                "adam_beta2 = -0.5",
                "[training] adam_beta2 = -0.5: must be in [0, 1)",
            ),
            (
                "training",
                "adam_epsilon = 0.0",
                "[training] adam_epsilon = 0: must be a number above 0",
            ),
            (
                "training",
                "max_grad_norm = -1.0",
                "[training] max_grad_norm = -1: must be a number of at least 0",
            ),
            (
                "training",
                "logging_steps = 0",
                "[training] logging_steps = 0: must be at least 1",
            ),
            (
                "training",
                "save_total_limit = 0",
                "[training] save_total_limit = 0: must be at least 1",
            ),
            (
                "training",
                "pad_to_multiple_of = 0",
                "[training] pad_to_multiple_of = 0: must be at least 1",
            ),
            (
                "training",
                "warmup_steps = -2",
                "[training] warmup_steps: invalid value: integer `-2`",
            ),
            (
                "lora",
                "lora_alpha = -16",
                "[lora] lora_alpha: -16 is out of range: must be a number above 0",
            ),
            ("lora", "lora_alpha = 0", "[lora] lora_alpha: 0 is out of range"),
            (
                "lora",
                "alpha_pattern = { q_proj = 0.0 }",
                "[lora] alpha_pattern.q_proj: 0 is out of range",
            ),
            (
                "lora",
                "lora_dropout = 1.0",
                "[lora] lora_dropout: 1 is out of range: must be in [0, 1)",
            ),
            ("lora", "r = 0", "[lora] r: expected a positive integer, found 0"),
        ];
        for (section, line, expected) in cases {
            let err = error_with(section, line);
            assert!(err.contains(expected), "{line}: {err}");
        }
        // Epochs are not read when max_steps decides the length, but must still be a number.
        let text = "[model]\npath = \"m\"\n[data]\npath = \"d\"\n[training]\nmax_steps = 5\nnum_train_epochs = 0.0";
        RunConfig::parse(text, Path::new("run.toml")).unwrap();
    }
}
