//! llama.cpp itself, run through node-llama-cpp's prebuilt CPU binaries
//! (`fixtures/run_llama_cpp.mjs`; `cargo xtask fetch-assets` installs node-llama-cpp), and the
//! comparison of its greedy tokens with Ember's.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The folder holding `node_modules/node-llama-cpp`; `None` when asset tests are skipped.
pub fn root() -> Option<PathBuf> {
    let addon = crate::asset("node-llama-cpp/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/llama-addon.node")?;
    addon.ancestors().nth(6).map(Path::to_path_buf)
}

/// Runs `fixtures/run_llama_cpp.mjs` (see its header for `request`) and returns its answer.
///
/// # Panics
///
/// When node is missing or the script fails, with llama.cpp's messages.
pub fn run(root: &Path, request: &serde_json::Value) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/run_llama_cpp.mjs");
    let mut child = Command::new("node")
        .arg(script)
        .env("EMBER_NODE_LLAMA_CPP", root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs (apt-get install nodejs)");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(request.to_string().as_bytes())
        .expect("request written");
    drop(stdin);
    let out = child.wait_with_output().expect("node finishes");
    assert!(
        out.status.success(),
        "llama.cpp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script's JSON answer")
}

/// Quantizes the GGUF file `input` into `output` as `ftype` (`"Q4_K_M"`, `"Q8_0"`) with
/// llama.cpp's own quantizer (`llama_model_quantize` of node-llama-cpp's libllama, through
/// `fixtures/run_llama_quantize.py`), as `llama-quantize input output ftype` would.
///
/// # Panics
///
/// When python3 is missing or llama.cpp fails, with its messages.
pub fn quantize(root: &Path, input: &Path, output: &Path, ftype: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/run_llama_quantize.py");
    let out = Command::new("python3")
        .arg(script)
        .args([root, input, output])
        .arg(ftype)
        .output()
        .expect("python3 runs (cargo xtask test installs it)");
    assert!(
        out.status.success(),
        "llama_model_quantize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Ember's view of one greedy step: the token it picked, its runner-up, and the logit gap
/// between them.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub token: u32,
    pub runner_up: u32,
    pub gap: f32,
}

/// Ember's greedy `tokens` after a prompt of `prompt_len` tokens as [`Step`]s, read from the
/// logits `rows` (`[prompt_len + tokens.len(), vocab]`, row-major) of the whole sequence.
pub fn steps(rows: &[f32], vocab: usize, prompt_len: usize, tokens: &[u32]) -> Vec<Step> {
    tokens
        .iter()
        .enumerate()
        .map(|(i, &token)| {
            let row = &rows[(prompt_len - 1 + i) * vocab..][..vocab];
            let (runner_up, second) = row
                .iter()
                .enumerate()
                .filter(|&(t, _)| t != token as usize)
                .fold((0, f32::MIN), |best, (t, &v)| if v > best.1 { (t, v) } else { best });
            Step {
                token,
                runner_up: runner_up as u32,
                gap: row[token as usize] - second,
            }
        })
        .collect()
}

/// How many of llama.cpp's greedy tokens `theirs` were checked against Ember's `ours`.
///
/// Equal token by token, as long as Ember's choice is clear (gap ≥ `tie`); at a near-tie,
/// where rounding in either runtime may pick either, llama.cpp may take Ember's runner-up,
/// after which the continuations differ and the comparison stops there. A sequence compared
/// to its end must have Ember's length (llama.cpp stops before an end-of-generation token,
/// so `ours` should stop there too).
///
/// # Errors
///
/// The first difference that is not such a near-tie.
pub fn greedy_agreement(ours: &[Step], theirs: &[u32], tie: f32) -> Result<usize, String> {
    for (i, step) in ours.iter().enumerate() {
        let Some(&token) = theirs.get(i) else {
            return Err(format!(
                "llama.cpp stopped after {i} tokens, Ember went on with {step:?}"
            ));
        };
        if token == step.token {
            continue;
        }
        if step.gap < tie && token == step.runner_up {
            return Ok(i);
        }
        return Err(format!("token {i}: llama.cpp {token}, Ember {step:?}"));
    }
    match theirs.len() > ours.len() {
        true => Err(format!(
            "llama.cpp went on past Ember's {} tokens: {theirs:?}",
            ours.len()
        )),
        false => Ok(ours.len()),
    }
}

/// How many of llama.cpp's greedy tokens `theirs` after a prompt of `prompt_len` tokens are
/// Ember's, read from Ember's logits `rows` (`[prompt_len + theirs.len(), vocab]`) of the prompt
/// followed by llama.cpp's tokens: Ember's greedy pick at each step is the argmax of its row, so
/// while the two agree this is the check [`greedy_agreement`] makes after decoding Ember's tokens
/// one by one, in one forward pass (decoding a 262k vocabulary token by token costs seconds a
/// token on a CPU test build).
///
/// A token that is not Ember's argmax is accepted only at a near-tie (its logit within `tie` of
/// the argmax), after which the continuations may part: the comparison stops there. Where
/// llama.cpp stopped before `wanted` tokens, Ember's next pick must be one of `stops`.
///
/// # Errors
///
/// The first step where llama.cpp's token is clearly not Ember's, or where llama.cpp stopped
/// and Ember would not have.
pub fn greedy_along(
    rows: &[f32],
    vocab: usize,
    prompt_len: usize,
    theirs: &[u32],
    wanted: usize,
    tie: f32,
    stops: &[u32],
) -> Result<usize, String> {
    let row = |i: usize| &rows[(prompt_len - 1 + i) * vocab..][..vocab];
    let argmax = |row: &[f32]| (0..row.len()).fold(0, |best, t| if row[t] > row[best] { t } else { best }) as u32;
    for (i, &token) in theirs.iter().enumerate() {
        let row = row(i);
        let ours = argmax(row);
        if ours == token {
            continue;
        }
        let gap = row[ours as usize] - row[token as usize];
        return match gap < tie {
            true => Ok(i),
            false => Err(format!(
                "token {i}: llama.cpp {token}, Ember {ours} (logits {gap} apart)"
            )),
        };
    }
    if theirs.len() < wanted {
        let ours = argmax(row(theirs.len()));
        if !stops.contains(&ours) {
            return Err(format!(
                "llama.cpp stopped after {} tokens, Ember went on with {ours}",
                theirs.len()
            ));
        }
    }
    Ok(theirs.len())
}
