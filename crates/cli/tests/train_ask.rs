//! `ember train --ask` answers with the adapter it just trained, in the run's prompt format.

use std::path::Path;
use std::process::Command;

#[test]
fn a_run_answers_what_it_is_asked() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_ember"))
        .current_dir(&repo)
        .args(["train", "--device", "cpu", "--config", "configs/quickstart.toml"])
        .args(["--set", "training.max_steps=2", "--set", "training.eval_steps=0"])
        .arg("--set")
        .arg(format!("training.output_dir={:?}", out.path().display().to_string()))
        .args(["--ask", "Write the word backwards.", "--ask", "Add the two numbers."])
        .args(["--ask-max-new-tokens", "4"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.starts_with("### Write the word backwards.\n"), "{stdout}");
    assert!(stdout.contains("\n### Add the two numbers.\n"), "{stdout}");
}
