//! Go's `text/template` (what Ollama renders a Modelfile's TEMPLATE with), run as WebAssembly
//! through node (`fixtures/render_go_template.mjs`; `cargo xtask fetch-assets` installs the
//! engine), for checking the templates Ember writes.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// `template` rendered over each of `data`; `None` when asset tests are skipped.
///
/// # Panics
///
/// When the engine is missing (naming the command that fetches it), node fails, or Go refuses
/// the template or the data (with Go's message).
pub fn render(template: &str, data: &[serde_json::Value]) -> Option<Vec<String>> {
    let wasm = crate::asset("go-template/main.wasm")?;
    crate::asset("go-template/wasm_exec.js")?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/render_go_template.mjs");
    let mut child = Command::new("node")
        .arg(script)
        .env("EMBER_GO_TEMPLATE", wasm.parent().expect("a folder"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs (apt-get install nodejs)");
    let request = serde_json::json!({"template": template, "data": data});
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(request.to_string().as_bytes())
        .expect("request written");
    drop(stdin);
    let out = child.wait_with_output().expect("node finishes");
    assert!(
        out.status.success(),
        "Go's text/template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("the script's JSON answer"))
}
