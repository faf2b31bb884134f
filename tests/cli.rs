//! The `ddp-run` binary as a user runs it.

mod common;
use common::*;

use std::process::Command;

fn ddp_run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ddp-run"))
        .args(["--cache", cache().to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn generate_on_smollm2_answers_paris() {
    let (ok, out, err) = ddp_run(&[
        "generate",
        "--model",
        SMOLLM2,
        "--prompt",
        "The capital of France is",
        "--max-new-tokens",
        "4",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("The capital of France is Paris"),
        "got {out:?}"
    );
}

#[test]
fn inspect_reports_smollm2_sizes() {
    let (ok, out, err) = ddp_run(&["inspect", SMOLLM2, "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["parameters"]["total"], 134_515_008);
    assert_eq!(v["heads"], 9);
    assert_eq!(v["kv_heads"], 3);
    assert_eq!(v["layers"], 30);
    assert_eq!(v["tied_embeddings"], true);
    let (ok, text, _) = ddp_run(&["inspect", SMOLLM2]);
    assert!(
        ok && text.contains("134,515,008 total") && text.contains("9 query / 3 KV"),
        "{text}"
    );
}

#[test]
fn stories260k_generates_the_reference_story() {
    let m = fixtures().join("stories260k.gguf");
    let (ok, out, err) = ddp_run(&[
        "generate",
        "--model",
        m.to_str().unwrap(),
        "--prompt",
        "Once upon a time",
        "--max-new-tokens",
        "12",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("Once upon a time, there was a little girl named Lily."),
        "{out:?}"
    );
}

#[test]
fn unavailable_devices_are_clear_errors() {
    let m = fixtures().join("stories260k.gguf");
    for dev in ["cuda", "tch-cuda:1"] {
        let (ok, _, err) = ddp_run(&[
            "--device",
            dev,
            "generate",
            "--model",
            m.to_str().unwrap(),
            "--prompt",
            "a",
        ]);
        assert!(!ok);
        assert!(err.starts_with("error: device `"), "{dev}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let (ok, _, err) = ddp_run(&["--device", "gpu", "inspect", m.to_str().unwrap()]);
    assert!(!ok && err.contains("expected cpu, cuda"), "{err}");
}

#[test]
fn bad_sources_are_clear_errors() {
    let (ok, _, err) = ddp_run(&["inspect", "no/such/model"]);
    assert!(
        !ok && err.contains("no/such/model") && err.contains("no such file"),
        "{err}"
    );
    let (ok, _, err) = ddp_run(&["inspect", "pip:somepkg:file.gguf"]);
    assert!(!ok && err.contains("PACKAGE==VERSION"), "{err}");
}
