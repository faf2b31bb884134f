//! Bad model files give errors that name the file, the tensor or key, and what was expected.

use crate::common::*;

use std::fs;
use std::path::Path;

use ddp::io::open_model;

fn err_of(path: &Path) -> String {
    match open_model(path) {
        Ok(files) => {
            // Some problems surface only when the weights are read.
            match ddp::model::load::load_model::<B>(
                &files.config,
                files.weights.as_ref(),
                &Default::default(),
                None,
            ) {
                Ok(_) => panic!("{} loaded without error", path.display()),
                Err(e) => e.to_string(),
            }
        }
        Err(e) => e.to_string(),
    }
}

fn copy_dir(dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        fs::copy(fixtures().join("stories260k").join(f), dst.join(f)).unwrap();
    }
}

#[test]
fn gguf_with_wrong_magic() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m.gguf");
    let mut b = fs::read(fixtures().join("stories260k.gguf")).unwrap();
    b[..4].copy_from_slice(b"GGUX");
    fs::write(&p, b).unwrap();
    let e = err_of(&p);
    assert!(e.contains("m.gguf") && e.contains("not a GGUF file"), "{e}");
}

#[test]
fn truncated_gguf_names_the_tensor() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("t.gguf");
    let b = fs::read(fixtures().join("stories260k.gguf")).unwrap();
    fs::write(&p, &b[..b.len() / 2]).unwrap();
    let e = err_of(&p);
    assert!(
        e.contains("t.gguf") && e.contains("tensor `") && e.contains("truncated"),
        "{e}"
    );
    // Cut inside the header too.
    fs::write(&p, &b[..100]).unwrap();
    let e = err_of(&p);
    assert!(e.contains("truncated GGUF"), "{e}");
}

#[test]
fn unknown_ggml_type_names_the_tensor() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("u.gguf");
    let mut b = fs::read(fixtures().join("stories260k.gguf")).unwrap();
    let name = b"blk.0.attn_q.weight";
    let at = b.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    // u32 n_dims, then n_dims u64 dims, then the u32 type id.
    let nd = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    let ty = at + 4 + 8 * nd;
    b[ty..ty + 4].copy_from_slice(&99u32.to_le_bytes());
    fs::write(&p, b).unwrap();
    let e = err_of(&p);
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("type id 99"),
        "{e}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let d = tempfile::tempdir().unwrap();
    copy_dir(d.path());
    let bytes = fs::read(d.path().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != "model.layers.3.mlp.up_proj.weight")
        .collect();
    safetensors::serialize_to_file(kept, None, &d.path().join("model.safetensors")).unwrap();
    let e = err_of(d.path());
    assert!(
        e.contains("model.layers.3.mlp.up_proj.weight") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn shape_contradicting_config_is_named() {
    let d = tempfile::tempdir().unwrap();
    copy_dir(d.path());
    let cfg = fs::read_to_string(d.path().join("config.json")).unwrap();
    fs::write(
        d.path().join("config.json"),
        cfg.replace("\"intermediate_size\": 172", "\"intermediate_size\": 100"),
    )
    .unwrap();
    let e = err_of(d.path());
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight")
            && e.contains("[172, 64]")
            && e.contains("[100, 64]"),
        "{e}"
    );
}

#[test]
fn truncated_safetensors() {
    let d = tempfile::tempdir().unwrap();
    copy_dir(d.path());
    let p = d.path().join("model.safetensors");
    let b = fs::read(&p).unwrap();
    fs::write(&p, &b[..b.len() - 1000]).unwrap();
    let e = err_of(d.path());
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );
}

#[test]
fn bad_config_values_name_the_key() {
    let d = tempfile::tempdir().unwrap();
    copy_dir(d.path());
    let cfg = fs::read_to_string(fixtures().join("stories260k/config.json")).unwrap();
    for (from, to, key) in [
        (
            "\"model_type\": \"llama\"",
            "\"model_type\": \"gpt_neox\"",
            "model_type",
        ),
        (
            "\"num_hidden_layers\": 5",
            "\"num_hidden_layers\": \"five\"",
            "num_hidden_layers",
        ),
        (
            "\"num_key_value_heads\": 4",
            "\"num_key_value_heads\": 3",
            "num_key_value_heads 3",
        ),
    ] {
        assert!(cfg.contains(from));
        fs::write(d.path().join("config.json"), cfg.replace(from, to)).unwrap();
        let e = err_of(d.path());
        assert!(e.contains("config.json") && e.contains(key), "{key}: {e}");
    }
    fs::write(d.path().join("config.json"), "{ not json").unwrap();
    assert!(err_of(d.path()).contains("invalid JSON"));
}

#[test]
fn not_a_model_at_all() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("notes.txt");
    fs::write(&p, "hello").unwrap();
    assert!(err_of(&p).contains("not a model"));
    assert!(err_of(d.path()).contains("config.json"));
}

/// Runs `f` on a thread and fails the test when it takes over 10 s (a read that blocks forever).
fn within_10s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what} hangs"))
}

#[test]
fn fifos_and_devices_are_refused_not_read_forever() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("m.gguf");
    let ok = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !ok.is_ok_and(|s| s.success()) {
        eprintln!("skipped: mkfifo is not available");
        return;
    }
    let f = fifo.clone();
    let e = within_10s("opening a FIFO", move || {
        open_model(&f).err().map(|e| e.to_string())
    });
    let e = e.expect("a FIFO is not a model");
    assert!(e.contains("m.gguf") && e.contains("regular file"), "{e}");
    // Planning hashes a local model's files: a link to an endless device must not hang it.
    let zero = d.path().join("z.gguf");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let cache = ddp::engine::cache::Cache::open(&d.path().join("cache")).unwrap();
    let e = within_10s("hashing /dev/zero", move || {
        cache.memo.digest(&zero).err().map(|e| e.chain())
    });
    let e = e.expect("a device is not hashed");
    assert!(e.contains("z.gguf") && e.contains("regular file"), "{e}");
}

#[test]
fn nonsense_norm_and_rope_constants_are_refused() {
    let cfg = fs::read_to_string(fixtures().join("stories260k/config.json")).unwrap();
    for (from, to, key) in [
        (
            "\"rms_norm_eps\": 1e-05",
            "\"rms_norm_eps\": -1",
            "rms_norm_eps",
        ),
        ("\"rope_theta\": 10000.0", "\"rope_theta\": 0", "rope_theta"),
    ] {
        let d = tempfile::tempdir().unwrap();
        copy_dir(d.path());
        fs::write(d.path().join("config.json"), cfg.replace(from, to)).unwrap();
        let e = err_of(d.path());
        assert!(e.contains(key) && e.contains("positive"), "{key}: {e}");
    }
}

#[test]
fn eval_of_a_model_with_nan_weights_fails_naming_the_cause() {
    let reference = open(fixtures().join("stories260k").to_str().unwrap());
    let mut tensors = ddp::io::export::read_all(reference.weights.as_ref()).unwrap();
    let t = tensors
        .get_mut("model.layers.0.mlp.down_proj.weight")
        .unwrap();
    t.data[0] = f32::NAN;
    let d = tempfile::tempdir().unwrap();
    let tok = reference.tokenizer.as_ref();
    ddp::io::export::write_hf_dir(d.path(), &reference.config, &tensors, tok).unwrap();
    let text = fixtures().join("corpora/moby-dick.txt");
    let (ok, out, err) = ddp_run(&[
        "eval",
        "--model",
        d.path().to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--max-tokens",
        "600",
        "--seq-len",
        "128",
    ]);
    assert!(!ok, "eval succeeded on NaN weights: {out}");
    assert!(
        err.contains("not finite") && err.contains("weights"),
        "{err}"
    );
}
