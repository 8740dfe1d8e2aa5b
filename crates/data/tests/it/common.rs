//! Shared test helpers: real assets, a tiny tokenizer, fixture files.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use ember_data::{DataConfig, Splits, Tokenizer, load};

pub use ember_testkit::asset;

/// The real Gemma 1/2 tokenizer (256,000 vocab), or `None` when asset tests are skipped.
pub fn gemma() -> Option<Tokenizer> {
    let path = asset("tokenizers/gemma/tokenizer.json")?;
    Some(Tokenizer::from_file(path).expect("the Gemma tokenizer loads"))
}

/// The real Gemma 3 tokenizer (262,144 vocab).
pub fn gemma3() -> Option<Tokenizer> {
    let path = asset("tokenizers/gemma3/tokenizer.json")?;
    Some(Tokenizer::from_file(path).expect("the Gemma 3 tokenizer loads"))
}

/// A tiny tokenizer with Gemma's special ids (`<pad>` 0, `<eos>` 1, `<bos>` 2,
/// `<start_of_turn>` 4, `<end_of_turn>` 5) whose text tokens are UTF-8 bytes (`id = byte +
/// 6`): every test can run without assets.
pub fn bytes_tokenizer() -> Tokenizer {
    let specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"];
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, token) in specials.iter().enumerate() {
        vocab.insert((*token).into(), id.into());
        added.push(serde_json::json!({
            "id": id, "content": token, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }));
    }
    for byte in 0..=255u32 {
        vocab.insert(format!("<0x{byte:02X}>"), (byte + 6).into());
    }
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": []
        }
    });
    let inner = tokenizers::Tokenizer::from_str(&json.to_string()).expect("tiny tokenizer");
    Tokenizer::new(inner).expect("tiny tokenizer has <bos> and <eos>")
}

/// Ids the bytes tokenizer gives `text`.
pub fn byte_ids(text: &str) -> Vec<u32> {
    text.bytes().map(|b| u32::from(b) + 6).collect()
}

/// Writes `contents` to `dir/name`.
pub fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, contents).unwrap();
    path
}

/// A committed fixture (see `tests/fixtures/make_parquet.py`).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The records of `tests/fixtures/alpaca.parquet`: (instruction, input, output).
pub fn alpaca_records() -> Vec<[&'static str; 3]> {
    vec![
        [
            "Give three tips for staying healthy.",
            "",
            "1. Eat a balanced diet.\n2. Exercise regularly.\n3. Sleep well.",
        ],
        [
            "Translate to French, keeping the \"quotes\", commas.",
            "Hello, \"world\" — naïve café ☕",
            "Bonjour, « monde » — café naïf ☕",
        ],
        [
            "Summarise the text.",
            "Line one.\nLine two, with a comma.",
            "Two lines.",
        ],
    ]
}

/// The alpaca records as JSON Lines.
pub fn alpaca_jsonl() -> String {
    alpaca_records()
        .iter()
        .map(|[i, n, o]| serde_json::json!({"instruction": i, "input": n, "output": o}).to_string() + "\n")
        .collect()
}

/// The config for `path`, single-threaded unless a test says otherwise.
pub fn config(path: &Path) -> DataConfig {
    let mut config = DataConfig::new(path.to_string_lossy());
    config.num_proc = Some(1);
    config
}

/// Loads `config` and returns the error message, which must exist.
pub fn load_err(config: &DataConfig, tokenizer: &Tokenizer) -> String {
    match load(config, tokenizer) {
        Ok(splits) => panic!("expected an error, loaded {} samples", splits.train.len()),
        Err(e) => e.to_string(),
    }
}

/// Loads `config`, which must succeed.
pub fn load_ok(config: &DataConfig, tokenizer: &Tokenizer) -> Splits {
    load(config, tokenizer).unwrap_or_else(|e| panic!("load failed: {e}"))
}
