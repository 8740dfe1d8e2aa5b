//! The real Gemma 3 270M GGUF (Q4_K_M) that `cargo xtask fetch-assets --with-weights` fetches:
//! its embedded tokenizer against Google's `tokenizer.json`, and the converted model's greedy
//! continuation. Each test returns early, saying so, where the assets are absent.

mod common;

use burn::tensor::DType;
use common::B;
use ember_data::Tokenizer;
use ember_model::gguf::{self, ConvertOptions, GgufFile};
use ember_model::{GemmaForCausalLM, GenerationConfig, LoadOptions, ModelSource, SamplingConfig};
use ember_testkit::asset;

const GGUF: &str = "weights/gemma-3-270m-q4_k_m.gguf";

const SAMPLES: &[&str] = &[
    "The capital of France is",
    "Hello, world! How are you doing today?",
    "fn main() {\n    let x: Vec<u32> = (0..10).map(|i| i * 2).collect();\n    println!(\"{x:?}\");\n}\n",
    "def f(a, b):\n\treturn {'sum': a + b, \"diff\": a - b}  # tabs and quotes",
    "Ünïcödé: café, naïve, 日本語のテキスト, 한국어, русский текст",
    "emoji 🦀🔥👍🏽, math ∑∫√∞, arrows →⇒, CJK punctuation 「」。",
    "   leading spaces, double  spaces,    many     spaces\n\n\nnewlines\r\n\t\ttabs   ",
    "<start_of_turn>user\nWrite a haiku.<end_of_turn>\n<start_of_turn>model\n",
    "<bos>Text with a literal <bos> and <eos> and <pad> and <unk> inside.",
    "Numbers 1234567890 3.14159 -42 1e-6 0x1F; URLs https://example.com/a?b=c&d=e",
    "",
    " ",
    "\u{0}\u{1}control\u{7f} and a lone ▁ marker ▁▁ too",
];

#[test]
fn the_embedded_tokenizer_gives_the_ids_of_googles_tokenizer_json() {
    let (Some(gguf_path), Some(reference_path)) = (asset(GGUF), asset("tokenizers/gemma3/tokenizer.json")) else {
        return;
    };
    let converted = ModelSource::open(&gguf_path).unwrap().tokenizer().unwrap();
    let reference = Tokenizer::from_file(&reference_path).unwrap();
    for text in SAMPLES {
        let ids = converted.encode_raw(text).unwrap();
        assert_eq!(ids, reference.encode_raw(text).unwrap(), "{text:?}");
        assert_eq!(
            converted.decode(&ids).unwrap(),
            reference.decode(&ids).unwrap(),
            "{text:?}"
        );
    }
    assert_eq!(converted.bos_id(), reference.bos_id());
    let mut stops = converted.stop_tokens().to_vec();
    stops.sort();
    assert_eq!(stops, [1, 106], "<eos> and <end_of_turn>");

    // Beyond the sample: the same vocabulary and the same merges, in the same order.
    let json = |text: &str| -> serde_json::Value { serde_json::from_str(text).unwrap() };
    let ours = json(
        &gguf::tokenizer(&GgufFile::open(&gguf_path).unwrap())
            .unwrap()
            .to_string(false)
            .unwrap(),
    );
    let theirs = json(&std::fs::read_to_string(&reference_path).unwrap());
    assert_eq!(ours["model"]["vocab"], theirs["model"]["vocab"]);
    assert!(ours["model"]["merges"] == theirs["model"]["merges"], "merges differ");
}

#[test]
fn the_converted_gguf_continues_a_prompt_greedily_as_known() {
    let Some(gguf_path) = asset(GGUF) else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    // f32 keeps the dequantized values exactly.
    gguf::convert(&gguf_path, out.path(), &ConvertOptions::new(DType::F32)).unwrap();
    let tokenizer = ModelSource::open(out.path()).unwrap().tokenizer().unwrap();
    let model = GemmaForCausalLM::<B>::load(out.path(), &LoadOptions::new(DType::F32), &Default::default()).unwrap();
    let prompt = tokenizer.encode("The capital of France is").unwrap();
    // Eight tokens: each step costs seconds on the CPU in a debug build (the tied head
    // multiplies by the whole 262k x 640 embedding).
    let config = GenerationConfig {
        max_new_tokens: 8,
        stop_tokens: tokenizer.stop_tokens().to_vec(),
        sampling: SamplingConfig::default(),
    };
    let tokens = model
        .generate(&prompt, &config, &Default::default(), |_| Ok(()))
        .unwrap();
    let text = tokenizer.decode(&tokens).unwrap();
    // The first eight tokens of the known greedy continuation, " the capital of the country of
    // France. It is the largest city in France and".
    assert_eq!(text, " the capital of the country of France.");
}
