//! A training process killed with SIGKILL at any moment, checkpoint writes included, leaves
//! only complete checkpoints behind, the newest one resumes, and what the killed writes left
//! (`.checkpoint-N.partial-PID`) is gone after the next start.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const CHECKPOINT_FILES: [&str; 4] = [
    "adapter_config.json",
    "adapter_model.safetensors",
    "optimizer.safetensors",
    "trainer_state.json",
];

fn checkpoints(out: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(out)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("checkpoint-"))
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn sigkill_never_leaves_a_half_written_checkpoint() {
    let out = tempfile::tempdir().unwrap();
    let config = out.path().join("run.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\npath = \"{}\"\n[lora]\nr = 4\nlora_alpha = 8\ntarget_modules = \"all-linear\"\n\
             [data]\npath = \"{}\"\nmax_seq_length = 48\n\
             [training]\noutput_dir = \"{}\"\nper_device_train_batch_size = 2\nmax_steps = 1000\n\
             learning_rate = 1e-3\nsave_steps = 1\nsave_total_limit = 3\noptim = \"adamw_8bit\"\n",
            repo().join("fixtures/models/gemma3").display(),
            repo().join("datasets/tiny-instructions.jsonl").display(),
            out.path().join("run").display()
        ),
    )
    .unwrap();
    let mut saw_checkpoint = false;
    for (round, millis) in [2500u64, 3100, 2800, 3500].into_iter().enumerate() {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ember"));
        command.args(["train", "--device", "cpu", "--config"]).arg(&config);
        if saw_checkpoint {
            command.args(["--resume", "latest"]);
        }
        let mut child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(millis));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();

        for dir in checkpoints(&out.path().join("run")) {
            for file in CHECKPOINT_FILES {
                assert!(dir.join(file).exists(), "round {round}: {} lacks {file}", dir.display());
            }
            let state: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("trainer_state.json")).unwrap()).unwrap();
            assert!(state["global_step"].as_u64().unwrap() > 0);
            saw_checkpoint = true;
        }
    }
    assert!(
        saw_checkpoint,
        "the runs were killed before any checkpoint: raise the sleeps"
    );
    // The newest checkpoint continues: two more steps, then a clean exit.
    let newest = checkpoints(&out.path().join("run"))
        .iter()
        .map(|dir| {
            let state: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("trainer_state.json")).unwrap()).unwrap();
            state["global_step"].as_u64().unwrap()
        })
        .max()
        .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["train", "--device", "cpu", "--resume", "latest", "--config"])
        .arg(&config)
        .args(["--set", &format!("training.max_steps={}", newest + 2)])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "resuming failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(out.path().join(format!("run/checkpoint-{}", newest + 2)).exists());
    let leftovers: Vec<String> = std::fs::read_dir(out.path().join("run"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}
