//! Checkpoints: `output_dir/checkpoint-N/` holds the adapter in PEFT format (usable as is),
//! the optimizer state, and `trainer_state.json` (step, data position, format version, what
//! the run was for). Written to a temporary directory and renamed: never half a checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{DType, TensorData};
use ember_data::LoaderPosition;
use ember_lora::{LoraConfig, write_adapter_files, write_dir_atomically};
use ember_model::GemmaForCausalLM;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::optim::{Optimizer, StateTensors};

/// Bumped when the layout of a checkpoint changes.
pub const FORMAT_VERSION: u32 = 1;
const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Everything besides tensors that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub format_version: u32,
    /// Optimizer steps taken.
    pub global_step: usize,
    pub total_steps: usize,
    pub loader: LoaderPosition,
    /// The base checkpoint's architecture (from its config.json), to refuse a resume onto
    /// another model.
    pub model_signature: String,
    /// `optim` of the run that wrote it.
    pub optim: String,
    /// The `[data]` and `[training]` settings of the run that wrote it, so that a resume
    /// can report what changed. Absent from checkpoints written before it existed.
    #[serde(default)]
    pub settings: serde_json::Value,
    /// Which run wrote it: a fresh run draws one, a resumed run keeps its checkpoint's. Only
    /// checkpoints of the current run are ever pruned. Empty in checkpoints written before it
    /// existed.
    #[serde(default)]
    pub run_id: String,
    /// The ranks of the data-parallel run that wrote it; 1 in checkpoints written before it
    /// existed.
    #[serde(default = "one_rank")]
    pub world_size: usize,
}

fn one_rank() -> usize {
    1
}

/// Where the checkpoint of `step` lives in `output_dir`.
pub fn checkpoint_dir(output_dir: &Path, step: usize) -> PathBuf {
    output_dir.join(format!("checkpoint-{step}"))
}

/// Saves a checkpoint as `output_dir/checkpoint-{step}`.
pub fn save<B: Backend, O: Backend>(
    output_dir: &Path,
    model: &GemmaForCausalLM<B>,
    lora: &LoraConfig,
    optimizer: &dyn Optimizer<O>,
    state: &TrainerState,
) -> Result<PathBuf> {
    let dir = checkpoint_dir(output_dir, state.global_step);
    write_dir_atomically(&dir, |tmp| -> Result<()> {
        write_adapter_files(model, lora, tmp)?;
        write_state_tensors(&tmp.join(OPTIMIZER_FILE), optimizer.state()).map_err(|message| {
            TrainError::Checkpoint {
                path: tmp.join(OPTIMIZER_FILE),
                message,
            }
        })?;
        let json = serde_json::to_string_pretty(state).expect("trainer state serialises");
        std::fs::write(tmp.join(STATE_FILE), json).map_err(|e| TrainError::io(tmp.join(STATE_FILE), e))
    })?;
    Ok(dir)
}

/// Reads `trainer_state.json` and the optimizer state of a checkpoint.
pub fn load_state(dir: &Path) -> Result<(TrainerState, StateTensors)> {
    let error = |message: String| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(dir.join(STATE_FILE)).map_err(|e| TrainError::io(dir.join(STATE_FILE), e))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| error(format!("{STATE_FILE}: {e}")))?;
    if state.format_version != FORMAT_VERSION {
        return Err(error(format!(
            "format version {} is not {FORMAT_VERSION}: it was written by another Ember version",
            state.format_version
        )));
    }
    let tensors = read_state_tensors(&dir.join(OPTIMIZER_FILE)).map_err(error)?;
    Ok((state, tensors))
}

/// A complete checkpoint found in an output directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub step: usize,
    pub dir: PathBuf,
    /// The run that wrote it ([`TrainerState::run_id`]).
    pub run_id: String,
}

/// The checkpoint with the highest step in `output_dir`.
pub fn latest(output_dir: &Path) -> Option<PathBuf> {
    list(output_dir).pop().map(|found| found.dir)
}

/// Every complete checkpoint in `output_dir` (a `checkpoint-N` with a readable
/// `trainer_state.json`), oldest step first.
pub fn list(output_dir: &Path) -> Vec<Found> {
    let mut found: Vec<Found> = std::fs::read_dir(output_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let step = e.file_name().to_str()?.strip_prefix("checkpoint-")?.parse().ok()?;
            let text = std::fs::read_to_string(e.path().join(STATE_FILE)).ok()?;
            let state: serde_json::Value = serde_json::from_str(&text).ok()?;
            let run_id = state["run_id"].as_str().unwrap_or_default().to_string();
            Some(Found {
                step,
                dir: e.path(),
                run_id,
            })
        })
        .collect();
    found.sort_by_key(|f| f.step);
    found
}

fn write_state_tensors(path: &Path, tensors: StateTensors) -> Result<(), String> {
    let views = tensors
        .iter()
        .map(|(name, data)| {
            let dtype = match data.dtype {
                DType::F32 => Dtype::F32,
                DType::I64 => Dtype::I64,
                DType::I32 => Dtype::I32,
                DType::U8 => Dtype::U8,
                DType::U32 => Dtype::U32,
                other => return Err(format!("cannot store `{name}` of dtype {other:?}")),
            };
            safetensors::tensor::TensorView::new(dtype, data.shape.to_vec(), data.as_bytes())
                .map(|v| (name.clone(), v))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, String>>()?;
    safetensors::serialize_to_file(views, Some(HashMap::new()), path).map_err(|e| e.to_string())
}

fn read_state_tensors(path: &Path) -> Result<StateTensors, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let dtype = match view.dtype() {
                Dtype::F32 => DType::F32,
                Dtype::I64 => DType::I64,
                Dtype::I32 => DType::I32,
                Dtype::U8 => DType::U8,
                Dtype::U32 => DType::U32,
                other => return Err(format!("`{name}` has unsupported dtype {other:?}")),
            };
            Ok((
                name,
                TensorData::from_bytes_vec(view.data().to_vec(), view.shape().to_vec(), dtype),
            ))
        })
        .collect()
}
