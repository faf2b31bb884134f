//! Dequantisation of every supported GGML type against the reference implementation (the
//! `gguf` Python package; vectors from tools/gen_quant_vectors.py).

use ddp::io::quants::{dequantize, GgmlType};

#[test]
fn every_block_type_matches_gguf_py() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/quant_vectors.json"
    ))
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let types = [
        ("F16", GgmlType::F16),
        ("BF16", GgmlType::BF16),
        ("Q4_0", GgmlType::Q4_0),
        ("Q4_1", GgmlType::Q4_1),
        ("Q5_0", GgmlType::Q5_0),
        ("Q5_1", GgmlType::Q5_1),
        ("Q8_0", GgmlType::Q8_0),
        ("Q2_K", GgmlType::Q2K),
        ("Q3_K", GgmlType::Q3K),
        ("Q4_K", GgmlType::Q4K),
        ("Q5_K", GgmlType::Q5K),
        ("Q6_K", GgmlType::Q6K),
    ];
    for (name, ty) in types {
        let case = &v[name];
        let hex = case["bytes"].as_str().unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let want: Vec<f32> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(
            ty.bytes_for(want.len()),
            Some(bytes.len()),
            "{name}: block size"
        );
        let mut got = vec![0f32; want.len()];
        dequantize(ty, &bytes, &mut got);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // The reference computes in numpy f32 with its own operation order: allow 1 ulp-ish.
            let tol = 1e-6 * w.abs().max(1.0);
            assert!(
                (g - w).abs() <= tol,
                "{name}[{i}]: got {g}, gguf-py says {w}"
            );
        }
        assert!(got.iter().any(|x| *x != 0.0), "{name}: all zeros");
    }
}

#[test]
fn partial_blocks_are_refused() {
    assert_eq!(GgmlType::Q4K.bytes_for(255), None);
    assert_eq!(GgmlType::Q8_0.bytes_for(64), Some(68));
    assert_eq!(
        GgmlType::from_id(16),
        None,
        "IQ2_XXS is not supported and must be named as such"
    );
}
