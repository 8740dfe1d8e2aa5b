//! A run's `output_dir` and the rules that keep runs apart: one run owns the directory (a fresh
//! run refuses a directory holding another run's checkpoints, unless `overwrite_output_dir`),
//! only the owning run's checkpoints are pruned and never the one just written, `metrics.jsonl`
//! holds the steps of the history the checkpoints continue, and `run_config.toml` is replaced
//! whole.

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use ember_lora::{LoraConfig, clean_stale_writes, write_file_atomically};
use ember_model::GemmaForCausalLM;

use crate::checkpoint::{self, TrainerState};
use crate::config::{RunConfig, TrainingArgs};
use crate::error::{Result, TrainError};
use crate::optim::Optimizer;

const METRICS_FILE: &str = "metrics.jsonl";
const CONFIG_FILE: &str = "run_config.toml";

/// The output directory of the run `run_id`, claimed by [`OutputDir::claim`].
pub struct OutputDir {
    path: PathBuf,
    run_id: String,
    save_total_limit: Option<usize>,
}

impl OutputDir {
    /// Claims `args.output_dir` for the run `run_id` (a fresh run's new id, or the id of the
    /// checkpoint a run resumes). Leftovers of writers that were killed are cleaned up (and
    /// logged). Checkpoints of any other run make this an error naming `--resume latest` and
    /// `overwrite_output_dir`; with `overwrite_output_dir = true` they are deleted instead.
    pub fn claim(args: &TrainingArgs, run_id: &str) -> Result<Self> {
        let path = args.output_dir.clone();
        std::fs::create_dir_all(&path).map_err(|e| TrainError::io(&path, e))?;
        for line in clean_stale_writes(&path)? {
            tracing::warn!("{line}");
        }
        let others: Vec<_> = checkpoint::list(&path)
            .into_iter()
            .filter(|found| found.run_id != run_id)
            .collect();
        if !others.is_empty() && !args.overwrite_output_dir {
            let names: Vec<String> = others
                .iter()
                .map(|found| found.dir.file_name().unwrap_or_default().to_string_lossy().into_owned())
                .collect();
            return Err(TrainError::OutputDir {
                path,
                message: format!(
                    "it holds checkpoints of another run ({}). Continue that run with `--resume latest`, \
                     or set `overwrite_output_dir = true` in [training] (`--set training.overwrite_output_dir=true`) \
                     to delete them and start anew, or choose another output_dir",
                    names.join(", ")
                ),
            });
        }
        for found in others {
            tracing::warn!("overwrite_output_dir: deleting {} of another run", found.dir.display());
            std::fs::remove_dir_all(&found.dir).map_err(|e| TrainError::io(&found.dir, e))?;
        }
        Ok(Self {
            path,
            run_id: run_id.to_string(),
            save_total_limit: args.save_total_limit,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the resolved config as `run_config.toml`, atomically.
    pub fn write_config(&self, config: &RunConfig) -> Result<()> {
        let path = self.path.join(CONFIG_FILE);
        let text = toml::to_string_pretty(&config.resolved).map_err(|e| TrainError::Config {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(write_file_atomically(&path, text.as_bytes())?)
    }

    /// `metrics.jsonl`, started anew for a fresh run. A run resumed at `resumed_step` keeps
    /// the complete lines up to that step and appends: lines of steps after the checkpoint
    /// (logged before a crash, about to be redone) and a line torn by a kill are dropped.
    pub fn metrics(&self, resumed_step: Option<usize>) -> Result<MetricsLog> {
        let path = self.path.join(METRICS_FILE);
        if let Some(step) = resumed_step {
            let kept = match std::fs::read_to_string(&path) {
                Ok(text) => lines_up_to(&text, step),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(TrainError::io(&path, e)),
            };
            write_file_atomically(&path, kept.as_bytes())?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resumed_step.is_some())
            .truncate(resumed_step.is_none())
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        Ok(MetricsLog { file, path })
    }

    /// Saves a checkpoint of this run as `checkpoint-{step}`, then prunes this run's older
    /// checkpoints beyond `save_total_limit`; the one just written is always kept, and other
    /// runs' checkpoints are never touched.
    pub fn save<B: Backend, O: Backend>(
        &self,
        model: &GemmaForCausalLM<B>,
        lora: &LoraConfig,
        optimizer: &dyn Optimizer<O>,
        state: &TrainerState,
    ) -> Result<PathBuf> {
        debug_assert_eq!(state.run_id, self.run_id);
        let dir = checkpoint::save(&self.path, model, lora, optimizer, state)?;
        if let Some(limit) = self.save_total_limit {
            let mut older: Vec<_> = checkpoint::list(&self.path)
                .into_iter()
                .filter(|found| found.run_id == self.run_id && found.dir != dir)
                .collect();
            // Checkpoints past this step are from before this run went back to an earlier
            // checkpoint: they go first, then the oldest.
            older.sort_by_key(|found| (found.step < state.global_step, found.step));
            let excess = older.len().saturating_sub(limit.max(1) - 1);
            for found in &older[..excess] {
                std::fs::remove_dir_all(&found.dir).map_err(|e| TrainError::io(&found.dir, e))?;
            }
        }
        Ok(dir)
    }
}

/// The complete lines of a `metrics.jsonl` whose `step` is at most `step`.
fn lines_up_to(text: &str, step: usize) -> String {
    text.split_inclusive('\n')
        .filter(|line| line.ends_with('\n'))
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s as usize <= step)
        })
        .collect()
}

/// `metrics.jsonl`: one JSON object per logged step.
pub struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsLog {
    /// Appends one line; a kill mid-write leaves at most a torn last line, which readers skip.
    pub fn write(&mut self, record: &impl serde::Serialize) -> Result<()> {
        let line = serde_json::to_string(record).expect("a step log serialises") + "\n";
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| TrainError::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_keeps_the_complete_lines_up_to_its_step() {
        let text = "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n{\"step\":4,\"lo";
        assert_eq!(lines_up_to(text, 2), "{\"step\":1}\n{\"step\":2}\n");
        assert_eq!(lines_up_to(text, 9), "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n");
    }
}
