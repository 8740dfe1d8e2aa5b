//! Which type each matrix of a Q4_K_M file gets: llama.cpp's mix (`llama-quant.cpp`'s
//! `llama_tensor_get_type` for `LLAMA_FTYPE_MOSTLY_Q4_K_M`, without an importance matrix or
//! overrides), for the Gemma architectures, whose embedding is the output head.

use super::types::GgmlType;

/// `use_more_bits`: the first and last eighth of the layers, and every third in between.
fn use_more_bits(layer: i64, layers: i64) -> bool {
    layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2
}

/// The type of the matrix `name` (llama.cpp's name) whose rows hold `row` values, in a model of
/// `layers` blocks.
///
/// Q4_K by default; Q6_K for the tied embedding (the output head) and, on `use_more_bits`
/// layers, for `attn_v` and `ffn_down` (llama.cpp counts those tensors in file order, sorted by
/// layer, so the count is the layer index). A row that is no whole number of 256-value blocks
/// falls back as `tensor_type_fallback` does: Q4_K to Q5_0, Q6_K to Q8_0, the embedding straight
/// to Q8_0, and to F16 where not even 32-value blocks fit.
pub(super) fn q4_k_m_type(name: &str, row: usize, layers: usize) -> GgmlType {
    let layer = name
        .strip_prefix("blk.")
        .and_then(|rest| rest.split_once('.'))
        .and_then(|(index, _)| index.parse::<i64>().ok());
    let more_bits = || layer.is_some_and(|i| use_more_bits(i, layers as i64));
    let target = if name == "token_embd.weight" {
        match row.is_multiple_of(256) {
            true => GgmlType::Q6_K,
            false => GgmlType::Q8_0,
        }
    } else if (name.contains("attn_v.weight") || name.contains("ffn_down")) && more_bits() {
        GgmlType::Q6_K
    } else {
        GgmlType::Q4_K
    };
    let fitting = match (target, row.is_multiple_of(256)) {
        (GgmlType::Q4_K, false) => GgmlType::Q5_0,
        (GgmlType::Q6_K, false) => GgmlType::Q8_0,
        (ty, _) => ty,
    };
    match row.is_multiple_of(fitting.block().0) {
        true => fitting,
        false => GgmlType::F16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlType::*;

    #[test]
    fn eighteen_layers_get_llama_cpps_q6_k_layers() {
        // Gemma 3 270M: 18 blocks; use_more_bits picks 0, 1 (< 18/8), 15, 16, 17 (≥ 7·18/8)
        // and every third from 2 on: 4, 7, 10, 13.
        let q6: Vec<usize> = (0..18)
            .filter(|i| q4_k_m_type(&format!("blk.{i}.ffn_down.weight"), 2048, 18) == Q6_K)
            .collect();
        assert_eq!(q6, [0, 1, 4, 7, 10, 13, 15, 16, 17]);
        assert_eq!(q4_k_m_type("blk.2.ffn_down.weight", 2048, 18), Q4_K);
        assert_eq!(q4_k_m_type("blk.0.attn_v.weight", 640, 18), Q8_0);
        assert_eq!(q4_k_m_type("blk.2.attn_v.weight", 640, 18), Q5_0);
        assert_eq!(q4_k_m_type("blk.0.attn_q.weight", 640, 18), Q5_0);
        assert_eq!(q4_k_m_type("blk.0.attn_output.weight", 1024, 18), Q4_K);
        assert_eq!(q4_k_m_type("token_embd.weight", 640, 18), Q8_0);
        assert_eq!(q4_k_m_type("token_embd.weight", 2048, 18), Q6_K);
        assert_eq!(q4_k_m_type("blk.0.attn_q.weight", 48, 18), F16);
    }
}
