//! bitsandbytes' 4-bit formats against bitsandbytes itself (`fixtures/make_bnb4_fixtures.py`,
//! made with bnb's CUDA kernels): quantization and dequantization bit for bit, pre-quantized
//! checkpoints as transformers saves them, and models loaded in 4 bits against transformers +
//! bitsandbytes' logits.

use std::path::{Path, PathBuf};

use crate::common::{B, TOLERANCE, fixture};
use burn::tensor::{DType, TensorData};
use ember_model::bnb::{
    Absmax, FourBit, FourBitConfig, FourBitWeight, NESTED_BLOCKSIZE, NestedAbsmax, QuantType, dynamic_map, nearest,
    quantize_blockwise,
};
use ember_model::{FrozenWeight, GemmaForCausalLM, LoadOptions, LogitsReference};
use safetensors::SafeTensors;

fn bnb4(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/bnb4")
        .join(path)
}

struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    fn open() -> Self {
        Self {
            bytes: std::fs::read(bnb4("tensors.safetensors")).unwrap(),
        }
    }

    /// A tensor's values as f32 (bf16 widened exactly) and its dtype.
    fn floats(&self, key: &str) -> (Vec<f32>, DType) {
        let tensors = SafeTensors::deserialize(&self.bytes).unwrap();
        let view = tensors.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
        let data = view.data();
        match view.dtype() {
            safetensors::Dtype::F32 => (
                data.chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                DType::F32,
            ),
            safetensors::Dtype::BF16 => (
                data.chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes(b.try_into().unwrap()).to_f32())
                    .collect(),
                DType::BF16,
            ),
            other => panic!("{key}: {other:?}"),
        }
    }

    fn bytes(&self, key: &str) -> Vec<u8> {
        let tensors = SafeTensors::deserialize(&self.bytes).unwrap();
        tensors
            .tensor(key)
            .unwrap_or_else(|e| panic!("{key}: {e}"))
            .data()
            .to_vec()
    }
}

/// Every case of the fixture: (shape, dtype name, quant type, double quantization).
fn cases() -> Vec<(&'static str, &'static str, QuantType, bool)> {
    let mut cases = Vec::new();
    for shape in ["odd", "rows"] {
        for dtype in ["f32", "bf16"] {
            for quant_type in [QuantType::Nf4, QuantType::Fp4] {
                for double in [false, true] {
                    cases.push((shape, dtype, quant_type, double));
                }
            }
        }
    }
    cases
}

fn case_name(shape: &str, dtype: &str, quant_type: QuantType, double: bool) -> String {
    let double = if double { "double" } else { "plain" };
    format!("{shape}.{dtype}.{}.{double}", quant_type.name())
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// The fixture's quantized form of `case`, as bnb stored it.
fn stored(f: &Fixture, case: &str, quant_type: QuantType, double: bool, len: usize) -> FourBit {
    let absmax = if double {
        Absmax::Nested(NestedAbsmax {
            codes: f.bytes(&format!("{case}.absmax")),
            absmax: f.floats(&format!("{case}.nested_absmax")).0,
            offset: f.floats(&format!("{case}.offset")).0[0],
        })
    } else {
        Absmax::Plain(f.floats(&format!("{case}.absmax")).0)
    };
    FourBit {
        quant_type,
        blocksize: 64,
        len,
        packed: f.bytes(&format!("{case}.packed")),
        absmax,
    }
}

/// Each value's code, in order (two per byte, the high nibble first).
fn codes(packed: &[u8], len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            if i % 2 == 0 {
                packed[i / 2] >> 4
            } else {
                packed[i / 2] & 0x0f
            }
        })
        .collect()
}

/// `x` moved by `ulps` units in the last place.
fn ulps(x: f32, ulps: i32) -> f32 {
    f32::from_bits((x.to_bits() as i32 + ulps) as u32)
}

/// The positions where `ours` and `theirs` differ, each checked to be a value within rounding of
/// a threshold: coding it with a reciprocal of its block's absmax up to 2 ulps off (bnb's
/// fast-math `1 / absmax`) gives bnb's code.
fn reciprocal_ties(
    ours: &[u8],
    theirs: &[u8],
    code_with: impl Fn(usize, f32) -> u8,
    inv: impl Fn(usize) -> f32,
) -> usize {
    let mut ties = 0;
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        if a != b {
            let explained = (-2..=2).any(|k| code_with(i, ulps(inv(i), k)) == *b);
            assert!(explained, "value {i}: code {a}, bnb's {b}, not a reciprocal rounding");
            ties += 1;
        }
    }
    ties
}

#[test]
fn quantize_4bit_is_bitsandbytes_up_to_its_fast_math_reciprocal() {
    let f = Fixture::open();
    let (mut ties, mut total) = (0, 0);
    for (shape, dtype, quant_type, double) in cases() {
        let case = case_name(shape, dtype, quant_type, double);
        let (input, _) = f.floats(&format!("{shape}.{dtype}.input"));
        let ours = FourBit::quantize(&input, quant_type, 64, double);
        let theirs = stored(&f, &case, quant_type, double, input.len());
        let plain = FourBit::quantize(&input, quant_type, 64, false);
        let Absmax::Plain(absmax) = &plain.absmax else {
            unreachable!()
        };
        let case_ties = reciprocal_ties(
            &codes(&ours.packed, input.len()),
            &codes(&theirs.packed, input.len()),
            |i, inv| quant_type.encode(input[i] * inv),
            |i| 1.0 / absmax[i / 64],
        );
        assert!(case_ties * 1000 <= input.len(), "{case}: {case_ties} ties");
        ties += case_ties;
        total += input.len();
        match (&ours.absmax, &theirs.absmax) {
            (Absmax::Plain(ours), Absmax::Plain(theirs)) => assert_eq!(bits(ours), bits(theirs), "{case}: absmax"),
            (Absmax::Nested(ours), Absmax::Nested(theirs)) => {
                // The mean is summed in another order than torch's: equal to a few ulps.
                let tolerance = theirs.offset.abs() * 4.0 * f32::EPSILON;
                assert!(
                    (ours.offset - theirs.offset).abs() <= tolerance,
                    "{case}: offset {} vs {}",
                    ours.offset,
                    theirs.offset
                );
                // Given bnb's offset, the nested absmax are bnb's and the 8-bit codes too, up to
                // the same reciprocal.
                let centred: Vec<f32> = absmax.iter().map(|v| v - theirs.offset).collect();
                let map = dynamic_map(true);
                let (codes, nested) = quantize_blockwise(&centred, &map, NESTED_BLOCKSIZE);
                assert_eq!(bits(&nested), bits(&theirs.absmax), "{case}: nested absmax");
                reciprocal_ties(
                    &codes,
                    &theirs.codes,
                    |i, inv| nearest(&map, centred[i] * inv),
                    |i| 1.0 / nested[i / NESTED_BLOCKSIZE],
                );
            }
            _ => panic!("{case}: double quantization differs"),
        }
    }
    // Ties come from bf16 weights, whose few mantissa bits land values on thresholds.
    assert!(ties * 2000 <= total, "{ties} of {total} codes differ");
}

#[test]
fn dequantize_4bit_is_bitsandbytes_bit_for_bit_on_the_host_and_the_device() {
    let f = Fixture::open();
    let device = Default::default();
    for (shape, dtype, quant_type, double) in cases() {
        let case = case_name(shape, dtype, quant_type, double);
        let (expected, dtype) = f.floats(&format!("{case}.dequantized"));
        let weight = stored(&f, &case, quant_type, double, expected.len());
        // The kernel rounds `table[code] · absmax` (f32) to the tensor's dtype.
        let round = |values: Vec<f32>| {
            TensorData::new(values, [expected.len()])
                .convert_dtype(dtype)
                .convert_dtype(DType::F32)
        };
        let host = round(weight.dequantize()).into_vec::<f32>().unwrap();
        assert_eq!(bits(&host), bits(&expected), "{case}: host");

        let rows = if shape == "odd" { 37 } else { 150 };
        let shape = [rows, expected.len() / rows];
        let on_device = FourBitWeight::<B>::new(&weight, shape, dtype, DType::F32, &device).dequantize();
        let on_device: Vec<f32> = on_device.into_data().into_vec().unwrap();
        assert_eq!(bits(&on_device), bits(&expected), "{case}: device");
    }
}

fn reference(name: &str) -> LogitsReference {
    LogitsReference::read(&bnb4(&format!("models/{name}/reference.safetensors"))).unwrap()
}

fn assert_logits_match(model: &GemmaForCausalLM<B>, name: &str, what: &str) {
    let found = reference(name).compare_full(model, &Default::default()).unwrap();
    assert!(
        found.max_abs_diff < TOLERANCE,
        "{name} ({what}): max |Δlogit| = {:e} exceeds {TOLERANCE:e}",
        found.max_abs_diff
    );
    assert_eq!(
        found.same_argmax, found.positions,
        "{name} ({what}): every top token agrees"
    );
}

/// (pre-quantized fixture, the fixture it was quantized from, how)
const MODELS: [(&str, &str, QuantType, bool); 2] = [
    ("gemma3-nf4", "gemma3", QuantType::Nf4, true),
    ("gemma2-fp4", "gemma2", QuantType::Fp4, false),
];

#[test]
fn pre_quantized_checkpoints_give_transformers_and_bitsandbytes_logits() {
    for (name, ..) in MODELS {
        let dir = bnb4(&format!("models/{name}"));
        let model = GemmaForCausalLM::<B>::load(&dir, &LoadOptions::new(DType::F32), &Default::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let four_bit = model.model.layers[0].mlp.down_proj.weight.dims();
        assert!(
            matches!(model.model.layers[0].mlp.down_proj.weight, FrozenWeight::FourBit(_)),
            "{four_bit:?}"
        );
        assert_logits_match(&model, name, "pre-quantized");
    }
}

#[test]
fn loading_in_4bit_quantizes_as_transformers_and_bitsandbytes() {
    for (name, base, quant_type, double) in MODELS {
        let options = LoadOptions {
            four_bit: Some(FourBitConfig {
                quant_type,
                double_quant: double,
                skip_modules: None,
            }),
            ..LoadOptions::new(DType::F32)
        };
        let model = GemmaForCausalLM::<B>::load(&fixture(base), &options, &Default::default()).unwrap();
        let stored = GemmaForCausalLM::<B>::load(
            &bnb4(&format!("models/{name}")),
            &LoadOptions::new(DType::F32),
            &Default::default(),
        )
        .unwrap();
        for (ours, theirs) in model.model.layers.iter().zip(&stored.model.layers) {
            let (FrozenWeight::FourBit(ours), FrozenWeight::FourBit(theirs)) =
                (&ours.self_attn.q_proj.weight, &theirs.self_attn.q_proj.weight)
            else {
                panic!("{name}: q_proj is not 4-bit");
            };
            let codes = |w: &FourBitWeight<B>| w.codes.val().into_data().convert::<i32>().into_vec::<i32>().unwrap();
            assert_eq!(codes(ours), codes(theirs), "{name}: packed codes");
            let values = |w: &FourBitWeight<B>| -> Vec<f32> { w.dequantize().into_data().into_vec().unwrap() };
            let (ours, theirs): (Vec<f32>, Vec<f32>) = (values(ours), values(theirs));
            let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(worst <= 1e-6, "{name}: dequantized weights differ by {worst:e}");
        }
        assert_logits_match(&model, name, "quantized on load");
    }
}
