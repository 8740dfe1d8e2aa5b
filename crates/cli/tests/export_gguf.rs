//! `ember export --format gguf|gguf-lora`: the merged model as one GGUF file (the adapter folded
//! in, as `--merge` folds it), the base alone, the adapter alone, and a refusal.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ember_model::gguf::{GgufFile, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ember(args: &[&str], out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .current_dir(repo())
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn assert_ok(out: &Output) {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

const MODEL: &[&str] = &["--model", "fixtures/models/gemma3", "--device", "cpu", "--dtype", "f32"];
const ADAPTER: &[&str] = &["--adapter", "fixtures/lora/plain"];

#[test]
fn an_f32_gguf_export_holds_the_merged_weights_of_a_merged_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (gguf, merged) = (dir.path().join("gguf"), dir.path().join("merged"));
    assert_ok(&ember(
        &[&["export", "--format", "gguf", "--outtype", "f32"], MODEL, ADAPTER].concat(),
        &gguf,
    ));
    assert_ok(&ember(&[&["export", "--merge"], MODEL, ADAPTER].concat(), &merged));

    let file = GgufFile::open(&gguf.join("model.gguf")).unwrap();
    assert_eq!(file.get("general.architecture"), Some(&Value::String("gemma3".into())));
    assert_eq!(file.get("general.file_type"), Some(&Value::U32(0)));
    let bytes = std::fs::read(merged.join("model.safetensors")).unwrap();
    let checkpoint = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    // v_proj carries neither the norm shift nor the query scale: the same f32 bytes.
    for layer in 0..7 {
        let want = checkpoint
            .tensor(&format!("model.layers.{layer}.self_attn.v_proj.weight"))
            .unwrap();
        let got = file.tensor(&format!("blk.{layer}.attn_v.weight")).unwrap();
        assert!(file.tensor_bytes(got).unwrap() == want.data(), "layer {layer}");
    }
}

#[test]
fn the_base_alone_exports_as_q8_0_and_the_adapter_alone_as_a_lora_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let (base, lora) = (dir.path().join("base"), dir.path().join("lora"));
    assert_ok(&ember(
        &[&["export", "--format", "gguf", "--outtype", "q8_0"], MODEL].concat(),
        &base,
    ));
    let file = GgufFile::open(&base.join("model.gguf")).unwrap();
    assert_eq!(file.get("general.file_type"), Some(&Value::U32(7)));
    assert_eq!(file.tensor("blk.0.attn_q.weight").unwrap().type_name(), "Q8_0");

    assert_ok(&ember(
        &[&["export", "--format", "gguf-lora"], MODEL, ADAPTER].concat(),
        &lora,
    ));
    let file = GgufFile::open(&lora.join("adapter.gguf")).unwrap();
    assert_eq!(file.get("general.type"), Some(&Value::String("adapter".into())));
    // Ollama runs the adapter over the base named by --model.
    let modelfile = std::fs::read_to_string(lora.join("Modelfile")).unwrap();
    let base = repo().join("fixtures/models/gemma3");
    assert!(
        modelfile.contains(&format!(
            "FROM {}\nADAPTER ./adapter.gguf\n",
            base.canonicalize().unwrap().display()
        )),
        "{modelfile}"
    );
    assert_eq!(file.get("adapter.lora.alpha"), Some(&Value::F32(8.0)));
    assert!(file.tensor("blk.0.attn_q.weight.lora_a").is_some());
}

#[test]
fn a_modelfile_with_the_models_chat_template_and_stops_is_written_beside_the_gguf() {
    // The fixture model with a chat template of Gemma's shape added to its tokenizer files.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("gemma3-chat");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(repo().join("fixtures/models/gemma3")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    let config_path = model.join("tokenizer_config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["chat_template"] = "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n\
        {{ m['content'] | trim }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
        .into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let out = dir.path().join("out");
    let model = model.to_str().unwrap();
    assert_ok(&ember(
        &[
            "export", "--format", "gguf", "--model", model, "--device", "cpu", "--dtype", "f32",
        ],
        &out,
    ));
    let modelfile = std::fs::read_to_string(out.join("Modelfile")).unwrap();
    assert!(modelfile.contains("\nFROM ./model.gguf\n"), "{modelfile}");
    assert!(
        modelfile.contains(r#"eq .Role "user" }}{{ "<start_of_turn>user\n" }}"#),
        "{modelfile}"
    );
    assert!(modelfile.contains("PARAMETER stop \"<eos>\"\n"), "{modelfile}");

    // Without a chat template: no TEMPLATE, and stderr says so.
    let plain = dir.path().join("plain");
    let run = ember(&[&["export", "--format", "gguf"], MODEL].concat(), &plain);
    assert_ok(&run);
    assert!(String::from_utf8_lossy(&run.stderr).contains("no chat template"));
    let modelfile = std::fs::read_to_string(plain.join("Modelfile")).unwrap();
    assert!(!modelfile.contains("TEMPLATE"), "{modelfile}");
}

#[test]
fn q4_k_m_exports_llama_cpps_mix() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q4");
    let run = ember(
        &[&["export", "--format", "gguf", "--outtype", "q4_k_m"], MODEL, ADAPTER].concat(),
        &out,
    );
    assert_ok(&run);
    assert!(String::from_utf8_lossy(&run.stderr).contains("GGUF (q4_k_m) written"));
    let file = GgufFile::open(&out.join("model.gguf")).unwrap();
    assert_eq!(file.get("general.file_type"), Some(&Value::U32(15)));
    // The fixture's 64-value rows take the fallbacks: Q5_0, and Q8_0 for the embedding and
    // the more-bits layers' attn_v (layers 2, 5 and 6 of 7).
    assert_eq!(file.tensor("blk.0.attn_q.weight").unwrap().type_name(), "Q5_0");
    assert_eq!(file.tensor("token_embd.weight").unwrap().type_name(), "Q8_0");
    assert_eq!(file.tensor("blk.2.attn_v.weight").unwrap().type_name(), "Q8_0");
    assert_eq!(file.tensor("blk.3.attn_v.weight").unwrap().type_name(), "Q5_0");
}

#[test]
fn a_lora_gguf_without_an_adapter_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = ember(
        &[&["export", "--format", "gguf-lora"], MODEL].concat(),
        &dir.path().join("x"),
    );
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--adapter"));
    assert!(!dir.path().join("x").exists());
}
