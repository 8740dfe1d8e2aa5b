//! `[lora] init_from`: a run that starts from an existing PEFT adapter (someone's fine-tune to
//! continue) instead of fresh adapters; not a resume: the optimizer and schedule start anew.
//!
//! The adapter directory decides the adapters (rank, alpha, targets, patterns): a `[lora]` key
//! that says otherwise is refused rather than silently ignored. Only `lora_dropout`, a
//! training setting, may differ.

use std::path::{Path, PathBuf};

use ember_lora::{CONFIG_FILE, LoraConfig, WEIGHTS_FILE};
use serde_json::Value;

/// The adapter config a run with `init_from = dir` trains: the directory's, with the run's
/// `lora_dropout` when `[lora]` sets it. `run` is the `[lora]` table read with its defaults and
/// `explicit` the keys the table sets. Errors are whole messages, naming the key.
pub fn adapter_config(dir: &Path, run: &LoraConfig, explicit: &[String]) -> Result<LoraConfig, String> {
    for file in [CONFIG_FILE, WEIGHTS_FILE] {
        if !dir.join(file).is_file() {
            return Err(format!(
                "[lora] init_from: {} has no {file}: init_from names a PEFT adapter directory (adapter_config.json and \
                 adapter_model.safetensors, as `ember train` and PEFT's save_pretrained write)",
                dir.display()
            ));
        }
    }
    let mut adapter = LoraConfig::from_file(&dir.join(CONFIG_FILE)).map_err(|e| format!("[lora] init_from: {e}"))?;
    let (theirs, ours) = (adapter.to_json(), run.to_json());
    for key in explicit.iter().filter(|k| k.as_str() != "lora_dropout") {
        let (a, b) = (normalised(&theirs[key.as_str()]), normalised(&ours[key.as_str()]));
        if a != b {
            return Err(format!(
                "[lora] {key} = {b}, but the adapter in {} (init_from) has {key} = {a}: the adapter \
                 decides; remove `{key}` from [lora] or set it to {a}",
                dir.display()
            ));
        }
    }
    if explicit.iter().any(|k| k == "lora_dropout") {
        adapter.lora_dropout = run.lora_dropout;
    }
    Ok(adapter)
}

/// `value` with lists of module names sorted: `["q_proj", "v_proj"]` is `["v_proj", "q_proj"]`.
fn normalised(value: &Value) -> Value {
    match value {
        Value::Array(items) if items.iter().all(Value::is_string) => {
            let mut names: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            names.sort_unstable();
            Value::from(names)
        }
        other => other.clone(),
    }
}

/// The directory an `init_from` value names.
pub fn path(value: &toml::Value) -> Result<PathBuf, String> {
    value
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| format!("expected the path of a PEFT adapter directory, found {value}"))
}
