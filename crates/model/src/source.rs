//! Where a model comes from: a Hugging Face checkpoint directory or a GGUF file. Which one is
//! decided, and its config parsed, once, when it is opened; the weights, the tokenizer and the
//! files an exported checkpoint needs are then read from what was opened.

use std::path::{Path, PathBuf};

use burn::tensor::{DType, backend::Backend};
use ember_data::Tokenizer;
use serde_json::Value;

use crate::checkpoint::Checkpoint;
use crate::config::{GemmaConfig, standalone_text_config};
use crate::error::{ModelError, Result};
use crate::gguf::{self, GgufFile, GgufWeights};
use crate::load::LoadOptions;
use crate::model::GemmaForCausalLM;
use crate::shards::{torch_dtype_name, write_json};

/// Files of a checkpoint directory that an exported model needs besides its weights and
/// `config.json`.
const COPIED_FILES: &[&str] = &[
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
];

/// A model path, opened: its architecture is known and, for GGUF, its header parsed.
pub struct ModelSource {
    path: PathBuf,
    config: GemmaConfig,
    /// `Some` for a GGUF file, `None` for a checkpoint directory.
    gguf: Option<GgufFile>,
}

impl ModelSource {
    /// Opens a checkpoint directory (`config.json`, safetensors, `tokenizer.json`) or, when
    /// `path` is a file, a GGUF file.
    pub fn open(path: &Path) -> Result<Self> {
        let (config, gguf) = if path.is_file() {
            let file = GgufFile::open(path)?;
            (gguf::gemma_config(&file)?, Some(file))
        } else {
            (GemmaConfig::from_file(path.join("config.json"))?, None)
        };
        Ok(Self {
            path: path.to_path_buf(),
            config,
            gguf,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn config(&self) -> &GemmaConfig {
        &self.config
    }

    /// The GGUF file, when the model is one.
    pub fn gguf(&self) -> Option<&GgufFile> {
        self.gguf.as_ref()
    }

    /// Builds the model on `device` (a GGUF file's weights dequantized as ggml does).
    pub fn load<B: Backend>(&self, options: &LoadOptions, device: &B::Device) -> Result<GemmaForCausalLM<B>> {
        let config = self.config.clone();
        match &self.gguf {
            Some(file) => {
                let mut weights = GgufWeights::new(file)?;
                // Progress counts the bytes of the loaded tensors, in the run dtype.
                options
                    .progress
                    .set_length(weights.element_count() * options.dtype.size() as u64);
                let model = GemmaForCausalLM::from_source(config, &mut weights, options, device)?;
                weights.finish()?;
                Ok(model)
            }
            None => {
                let mut checkpoint = Checkpoint::open(&self.path)?;
                options.progress.set_length(checkpoint.total_bytes());
                let model = GemmaForCausalLM::from_source(config, &mut checkpoint, options, device)?;
                checkpoint.finish()?;
                Ok(model)
            }
        }
    }

    /// What loading this model would fail on, every problem at once (see [`ModelSource::load`]):
    /// each tensor the config implies that is missing, mis-shaped or of an unreadable type, and
    /// the tensors the model does not use. Nothing is read or dequantized; `device` only holds
    /// placeholders. An `Err` is a checkpoint whose weights cannot even be listed.
    pub fn check_tensors<B: Backend>(&self, device: &B::Device) -> Result<Vec<ModelError>> {
        let config = self.config.clone();
        Ok(match &self.gguf {
            Some(file) => {
                let mut weights = GgufWeights::new(file)?;
                GemmaForCausalLM::<B>::check_source(config, &mut weights, &self.path, device)
            }
            None => {
                let mut checkpoint = Checkpoint::open(&self.path)?;
                GemmaForCausalLM::<B>::check_source(config, &mut checkpoint, &self.path, device)
            }
        })
    }

    /// The modules of a multimodal checkpoint that Ember does not load (its vision and audio
    /// towers and their projections into the text model), with their tensor counts:
    /// everything outside the text decoder and the LM head. Empty for a text model.
    pub fn other_modules(&self) -> Result<Vec<(String, usize)>> {
        if self.gguf.is_some() || self.config.module_prefix == "model" {
            return Ok(Vec::new());
        }
        let text = format!("{}.", self.config.module_prefix);
        let mut groups: Vec<(String, usize)> = Vec::new();
        for name in Checkpoint::open(&self.path)?.unused() {
            if name.starts_with(&text) || name.starts_with("lm_head.") {
                continue;
            }
            let module = name.splitn(3, '.').take(2).collect::<Vec<_>>().join(".");
            match groups.iter_mut().find(|(m, _)| *m == module) {
                Some((_, count)) => *count += 1,
                None => groups.push((module, 1)),
            }
        }
        Ok(groups)
    }

    /// The model's tokenizer, for training data and prompts alike: `tokenizer.json` (or the
    /// vocabulary a GGUF file embeds), with the BOS and stop tokens the model's files name
    /// (`generation_config.json` and `tokenizer_config.json`, or the GGUF metadata) besides
    /// `<eos>` and `<end_of_turn>`.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let Some(file) = &self.gguf else {
            return tokenizer_of_dir(&self.path);
        };
        let error = |e: ember_data::DataError| ModelError::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        };
        let mut tokenizer = Tokenizer::new(gguf::tokenizer(file)?).map_err(error)?;
        if let Some(bos) = file.get_usize("tokenizer.ggml.bos_token_id")? {
            tokenizer.set_bos(bos as u32);
        }
        for id in token_ids(gguf::generation_config(file)?.get("eos_token_id")) {
            tokenizer.add_stop_token(id);
        }
        Ok(tokenizer)
    }

    /// The model's chat template, if it has one: a GGUF file's `tokenizer.chat_template`, or a
    /// directory's (see [`dir_chat_template`]).
    pub fn chat_template(&self) -> Result<Option<String>> {
        if let Some(file) = &self.gguf {
            return Ok(file.get_str("tokenizer.chat_template")?.map(str::to_string));
        }
        let config = read_json(&self.path.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
        dir_chat_template(&self.path, &config)
    }

    /// Writes what a checkpoint directory of this model in `dtype` holds besides its weights:
    /// `config.json` with the new dtype, and the tokenizer and generation files (copied from a
    /// directory, or made from a GGUF file's metadata as `ember convert` makes them).
    pub fn write_checkpoint_files(&self, out: &Path, dtype: DType) -> Result<()> {
        let dtype_name = torch_dtype_name(dtype).ok_or_else(|| ModelError::Config {
            path: out.to_path_buf(),
            key: "dtype".into(),
            message: format!("cannot write weights in {dtype:?}; use f32, bf16 or f16"),
        })?;
        if let Some(file) = &self.gguf {
            return gguf::write_checkpoint_files(file, out, dtype_name);
        }
        let config_path = self.path.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| ModelError::io(&config_path, e))?;
        let mut config: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: config_path.clone(),
            source,
        })?;
        // Ember's model of a multimodal checkpoint is its text decoder, and so is the export.
        if let Some(text) = standalone_text_config(&config) {
            config = text;
        }
        if let Some(map) = config.as_object_mut() {
            // transformers 5 writes `dtype`, 4.x `torch_dtype`: keep whichever the base used.
            let key = if map.contains_key("dtype") {
                "dtype"
            } else {
                "torch_dtype"
            };
            map.insert(key.into(), Value::String(dtype_name.into()));
        }
        write_json(&out.join("config.json"), &config)?;
        for name in COPIED_FILES {
            let from = self.path.join(name);
            if from.exists() {
                std::fs::copy(&from, out.join(name)).map_err(|e| ModelError::io(&from, e))?;
            }
        }
        Ok(())
    }
}

/// `tokenizer.json` of a checkpoint directory, with its `generation_config.json` and
/// `tokenizer_config.json` read for stop tokens and BOS.
fn tokenizer_of_dir(dir: &Path) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    let mut tokenizer = Tokenizer::from_file(&path).map_err(|e| ModelError::Tokenizer {
        path: path.clone(),
        message: e.to_string(),
    })?;
    if let Some(generation) = read_json(&dir.join("generation_config.json"))? {
        for id in token_ids(generation.get("eos_token_id")) {
            tokenizer.add_stop_token(id);
        }
    }
    if let Some(config) = read_json(&dir.join("tokenizer_config.json"))? {
        if let Some(id) = special_token(config.get("eos_token")).and_then(|t| tokenizer.token_id(t)) {
            tokenizer.add_stop_token(id);
        }
        if let Some(id) = special_token(config.get("bos_token")).and_then(|t| tokenizer.token_id(t)) {
            tokenizer.set_bos(id);
        }
    }
    Ok(tokenizer)
}

pub(crate) fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })
}

/// `eos_token_id` is a single id or a list.
fn token_ids(value: Option<&Value>) -> Vec<u32> {
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_u64).map(|n| n as u32).collect(),
        Some(v) => v.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        None => Vec::new(),
    }
}

/// A special token written as `"<eos>"` or `{"content": "<eos>", ...}`.
pub(crate) fn special_token(value: Option<&Value>) -> Option<&str> {
    match value? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content")?.as_str(),
        _ => None,
    }
}

/// The chat template of `tokenizer_config.json` (a string, or a list whose `default` entry is
/// used), else `chat_template.jinja`.
pub(crate) fn dir_chat_template(dir: &Path, tokenizer_config: &Value) -> Result<Option<String>> {
    match tokenizer_config.get("chat_template") {
        Some(Value::String(template)) => return Ok(Some(template.clone())),
        Some(Value::Array(named)) => {
            let default = named.iter().find(|t| t["name"] == "default");
            return Ok(default.and_then(|t| t["template"].as_str()).map(str::to_string));
        }
        _ => {}
    }
    let path = dir.join("chat_template.jinja");
    match path.exists() {
        true => std::fs::read_to_string(&path)
            .map(Some)
            .map_err(|e| ModelError::io(&path, e)),
        false => Ok(None),
    }
}
