//! The real Gemma 3 270M GGUF (Q4_K_M) that `cargo xtask fetch-assets --with-weights` fetches:
//! its embedded tokenizer against Google's `tokenizer.json`, and the converted model's greedy
//! continuation. Each test returns early, saying so, where the assets are absent.

use crate::common::B;
use burn::tensor::DType;
use ember_data::Tokenizer;
use ember_model::gguf::{self, ConvertOptions, GgufFile, GgufFileType};
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

/// Text for teacher-forced comparisons: prose, code, numbers and other languages.
const PASSAGE: &str = "The Rhine rises in the Swiss Alps and flows north through Germany and the \
Netherlands into the North Sea. For centuries it carried coal, grain and timber, and its valley \
is lined with castles, vineyards and old market towns.\n\nfn fib(n: u64) -> u64 {\n    match n \
{\n        0 | 1 => n,\n        _ => fib(n - 1) + fib(n - 2),\n    }\n}\n\nIn 1969, 600 million \
people watched the first landing on the Moon; the journey took about 76 hours. 東京は日本の首都で、\
人口は約1400万人です。 La lune est le seul satellite naturel de la Terre, à environ 384 400 km. \
Water boils at 100 degrees Celsius at sea level, and freezes at 0 degrees.\n\n\
| city | country | population |\n|---|---|---|\n| Lagos | Nigeria | 15 million |\n| Lima | Peru | \
10 million |\n\nSELECT name, COUNT(*) AS n FROM orders WHERE total > 100 GROUP BY name ORDER BY n \
DESC;\n\nDear Ms. Patel, thank you for your letter of 3 March. We are pleased to confirm your \
reservation for two nights, arriving on Friday. Breakfast is served from seven until ten, and the \
station is a short walk from the hotel. Please let us know if you need anything else. 🙂";

/// Ember's Q4_K_M export of the real 270M is what llama.cpp's quantizer makes of Ember's f32
/// export, byte for byte: the 270M's 2048- and 1024-value rows (`ffn_down`, `attn_output`) are
/// real Q4_K and Q6_K blocks, its 640-value rows the Q5_0/Q8_0 fallbacks. llama.cpp then picks
/// Ember's top token at ≥ 90% of 256 teacher-forced positions (244 measured): llama.cpp rounds
/// the activations to 8 bits inside its quantized dot products, which moves near-ties.
/// The exported vocabulary tokenizes the mixed samples (code, emoji, CJK, whitespace runs)
/// into Ember's ids in llama.cpp.
#[test]
fn the_270m_exports_as_q4_k_m_as_llama_cpps_quantizer_makes_it_and_tokenizes_as_ember() {
    let (Some(gguf_path), Some(root)) = (asset(GGUF), ember_testkit::llama_cpp::root()) else {
        return;
    };
    let source = ModelSource::open(&gguf_path).unwrap();
    let model = source
        .load::<B>(&LoadOptions::new(DType::F32), &Default::default())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (f32_path, theirs, ours) = (
        dir.path().join("f32.gguf"),
        dir.path().join("llama-quantize.gguf"),
        dir.path().join("q4_k_m.gguf"),
    );
    let start = std::time::Instant::now();
    gguf::export_gguf(&model, &source, &f32_path, GgufFileType::F32).unwrap();
    ember_testkit::llama_cpp::quantize(&root, &f32_path, &theirs, "Q4_K_M");
    std::fs::remove_file(&f32_path).unwrap();
    gguf::export_gguf(&model, &source, &ours, GgufFileType::Q4_K_M).unwrap();
    drop(model);
    eprintln!("exports and llama.cpp's quantization: {:.1?}", start.elapsed());
    let (a, b) = (GgufFile::open(&ours).unwrap(), GgufFile::open(&theirs).unwrap());
    assert_eq!(a.get("general.file_type"), b.get("general.file_type"));
    assert_eq!(a.tensors().len(), b.tensors().len());
    let mut types = std::collections::BTreeMap::new();
    for info in a.tensors() {
        let other = b.tensor(&info.name).unwrap_or_else(|| panic!("{}", info.name));
        assert_eq!(info.type_name(), other.type_name(), "{}", info.name);
        assert!(
            a.tensor_bytes(info).unwrap() == b.tensor_bytes(other).unwrap(),
            "{} ({}): bytes differ",
            info.name,
            info.type_name()
        );
        *types.entry(info.type_name()).or_insert(0) += 1;
    }
    eprintln!("270M Q4_K_M tensor types {types:?}");
    assert!(types.contains_key("Q4_K") && types.contains_key("Q6_K"), "{types:?}");

    // Top-1 agreement with llama.cpp, Ember running the Q4_K_M file's weights.
    let tokenizer = source.tokenizer().unwrap();
    let model = ModelSource::open(&ours)
        .unwrap()
        .load::<B>(&LoadOptions::new(DType::F32), &Default::default())
        .unwrap();
    let ids = tokenizer.encode_raw(PASSAGE).unwrap();
    let sequences: Vec<Vec<u32>> = ids
        .chunks_exact(63)
        .take(4)
        .map(|chunk| {
            std::iter::once(tokenizer.bos_id())
                .chain(chunk.iter().copied())
                .collect()
        })
        .collect();
    assert_eq!(sequences.len(), 4, "the passage is 4 × 63 tokens or more");
    // Without special tokens (llama.cpp reads `<...>` in text as text here) and without a
    // literal `▁`: llama.cpp's SentencePiece tokenizer writes spaces as `▁` before matching,
    // so to it a `▁` in the text is a space (Google's tokenizer.json keeps the two apart). That
    // is llama.cpp's tokenizer, whatever file it reads.
    let texts: Vec<&str> = SAMPLES
        .iter()
        .copied()
        .filter(|t| !t.contains('<') && !t.contains('▁'))
        .collect();
    let answer = ember_testkit::llama_cpp::run(
        &root,
        &serde_json::json!({"model": ours, "teacher": sequences, "tokenize": texts}),
    );
    // The exported vocabulary gives Ember's ids for code, emoji, CJK and whitespace runs.
    let tokenized: Vec<Vec<u32>> = serde_json::from_value(answer["tokenize"].clone()).unwrap();
    for (text, theirs) in texts.iter().zip(&tokenized) {
        assert_eq!(&tokenizer.encode_raw(text).unwrap(), theirs, "{text:?}");
    }
    let theirs: Vec<Vec<u32>> = serde_json::from_value(answer["teacher"].clone()).unwrap();
    let vocab = model.config.vocab_size;
    let mut agree = 0;
    for (ids, theirs) in sequences.iter().zip(&theirs) {
        let rows = logits(&model, ids);
        let ours: Vec<u32> = rows.chunks(vocab).map(ember_model::argmax).collect();
        agree += ours.iter().zip(theirs).filter(|(a, b)| a == b).count();
    }
    eprintln!("270M Q4_K_M: llama.cpp's top-1 is Ember's at {agree}/256 teacher-forced positions");
    assert!(agree >= 231, "{agree}/256");
}

/// Logits of one sequence, `[len * vocab]`.
fn logits(model: &GemmaForCausalLM<B>, ids: &[u32]) -> Vec<f32> {
    use burn::tensor::{Int, Tensor};
    let device = Default::default();
    let n = ids.len();
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let input = ember_model::ForwardInput {
        input_ids: Tensor::<B, 1, Int>::from_data(ids.as_slice(), &device).reshape([1, n]),
        positions: Tensor::<B, 1, Int>::arange(0..n as i64, &device).reshape([1, n]),
        mask: ember_model::AttentionMask::causal(1, 0, n, n, &device),
    };
    crate::common::to_vec(model.forward(input, None))
}
