//! The sliced model as a drop-in replacement (issue 12, point 1): weights in the source's
//! dtype (or the one asked for) that read back, the tokenizer files transformers reads
//! (tokenizer_config.json with the special tokens and the source's chat template,
//! special_tokens_map.json, generation_config.json), the model card, config.json's `ddp`
//! block, and the `export` stage's card with the evaluation and its GGUF; transformers loads the result
//! when /work/torchenv is present.

use crate::common::*;

use std::fs;
use std::path::{Path, PathBuf};

use ddp::engine::{self, Outcome};
use ddp::io::dtype::{self, WeightDtype};
use ddp::io::export::{self, HfOptions};
use serde_json::{json, Value};

/// A template in the style of SmolLM2's, short enough to compare.
const TEMPLATE: &str = "{% for message in messages %}{{'<|' + message['role'] + '|>' + message['content'] + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}";

fn read_json(p: &Path) -> Value {
    let text = fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// The dtypes in a safetensors file's header.
fn stored_dtypes(file: &Path) -> Vec<String> {
    let bytes = fs::read(file).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut v: Vec<String> = meta
        .tensors()
        .values()
        .map(|i| format!("{:?}", i.dtype))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// stories260k written in `dtype` into `dir` (with the fixture's tokenizer).
fn stories_as(dtype: WeightDtype, dir: &Path) {
    let f = fixture("stories260k");
    let tensors = export::read_all(f.weights.as_ref()).unwrap();
    let opts = HfOptions {
        dtype,
        ..HfOptions::default()
    };
    export::write_hf_dir_with(dir, &f.config, &tensors, f.tokenizer.as_ref(), &opts).unwrap();
}

#[test]
fn the_source_dtype_is_the_stored_one_and_bf16_f16_read_back_within_their_precision() {
    let fx = fixtures();
    assert_eq!(
        dtype::of_source(&fx.join("stories260k")).unwrap(),
        WeightDtype::F32
    );
    assert_eq!(
        dtype::of_source(&fx.join("stories260k.gguf")).unwrap(),
        WeightDtype::F32
    );
    // Quantised GGUF blocks are written as f16 (documented in io::dtype).
    assert_eq!(
        dtype::of_source(&fx.join("stories260k-q8_0.gguf")).unwrap(),
        WeightDtype::F16
    );
    let (ids, want, _) = golden("stories260k.safetensors");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let f32_size = fs::metadata(fx.join("stories260k/model.safetensors"))
        .unwrap()
        .len();
    // bf16 keeps 8 significant bits, f16 11: the logits move by about that much.
    for (d, name, tol) in [
        (WeightDtype::BF16, "BF16", 0.02),
        (WeightDtype::F16, "F16", 0.003),
    ] {
        let dir = tempfile::tempdir().unwrap();
        stories_as(d, dir.path());
        let st = dir.path().join("model.safetensors");
        assert_eq!(stored_dtypes(&st), vec![name.to_string()]);
        let size = fs::metadata(&st).unwrap().len();
        // Half the bytes, the header (~5 kB, the same in both) aside.
        assert!(
            size < f32_size / 2 + 8192,
            "{name}: {size} bytes vs {f32_size} in f32"
        );
        assert_eq!(dtype::of_source(dir.path()).unwrap(), d);
        let cfg = read_json(&dir.path().join("config.json"));
        assert_eq!(cfg["torch_dtype"], json!(d.torch_name()));
        let back = ddp::io::open_model(dir.path()).unwrap();
        let diff = max_abs_diff(&logits(&model(&back), &ids), &want);
        eprintln!("{name}: max |logit| {scale}, diff {diff}");
        assert!(
            diff > 0.0 && diff <= tol * scale,
            "{name}: logits differ by {diff}"
        );
    }
}

#[test]
fn shards_count_bytes_of_the_written_dtype_and_f16_overflow_is_an_error() {
    let f = fixture("stories260k");
    let mut tensors = export::read_all(f.weights.as_ref()).unwrap();
    let shards = |dtype: WeightDtype, tensors: &_| {
        let d = tempfile::tempdir().unwrap();
        let opts = HfOptions {
            dtype,
            shard_bytes: Some(300_000),
            ..HfOptions::default()
        };
        export::write_hf_dir_with(d.path(), &f.config, tensors, None, &opts).unwrap();
        let index = read_json(&d.path().join("model.safetensors.index.json"));
        let files: std::collections::BTreeSet<String> = index["weight_map"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        (
            files.len(),
            index["metadata"]["total_size"].as_u64().unwrap(),
        )
    };
    let (n32, total32) = shards(WeightDtype::F32, &tensors);
    let (n16, total16) = shards(WeightDtype::BF16, &tensors);
    assert_eq!(total32, 4 * 292_800);
    assert_eq!(total16, 2 * 292_800);
    assert!(
        n16 < n32 && n16 >= 2,
        "{n16} bf16 shards vs {n32} f32 shards of 300 kB"
    );
    tensors.get_mut("model.norm.weight").unwrap().data[3] = 1e5;
    let d = tempfile::tempdir().unwrap();
    let opts = HfOptions {
        dtype: WeightDtype::F16,
        ..HfOptions::default()
    };
    let e = export::write_hf_dir_with(d.path(), &f.config, &tensors, None, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.norm.weight") && e.contains("65504"),
        "{e}"
    );
}

/// A copy of stories260k.gguf with `tokenizer.chat_template` = `template` (inserted as the
/// first metadata pair, with a padding pair that keeps the data section's 32-byte alignment).
fn gguf_with_template(template: &str, out: &Path) {
    let src = fs::read(fixtures().join("stories260k.gguf")).unwrap();
    assert_eq!(&src[..4], b"GGUF");
    let kv_str = |key: &str, val: &str| {
        let mut b = vec![];
        b.extend((key.len() as u64).to_le_bytes());
        b.extend(key.as_bytes());
        b.extend(8u32.to_le_bytes());
        b.extend((val.len() as u64).to_le_bytes());
        b.extend(val.as_bytes());
        b
    };
    let mut ins = kv_str("tokenizer.chat_template", template);
    let pad_key = "dropin.pad";
    let fixed = kv_str(pad_key, "").len();
    let pad = (32 - (ins.len() + fixed) % 32) % 32;
    ins.extend(kv_str(pad_key, &" ".repeat(pad)));
    assert_eq!(ins.len() % 32, 0);
    let kv_count = u64::from_le_bytes(src[16..24].try_into().unwrap()) + 2;
    let mut out_bytes = src[..16].to_vec();
    out_bytes.extend(kv_count.to_le_bytes());
    out_bytes.extend(ins);
    out_bytes.extend(&src[24..]);
    fs::write(out, out_bytes).unwrap();
}

#[test]
fn a_gguf_source_gives_tokenizer_config_with_its_chat_template_and_generation_config() {
    let d = tempfile::tempdir().unwrap();
    let gguf = d.path().join("chat.gguf");
    gguf_with_template(TEMPLATE, &gguf);
    // What `ddp-run convert` writes, with its defaults.
    let out = d.path().join("hf");
    let (ok, _, stderr) = ddp_run(&["convert", gguf.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let tc = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tc["chat_template"], json!(TEMPLATE));
    for (k, v) in [
        ("bos_token", json!("<s>")),
        ("eos_token", json!("</s>")),
        ("unk_token", json!("<unk>")),
        ("pad_token", json!("<unk>")),
        ("add_bos_token", json!(true)),
        ("add_eos_token", json!(false)),
        ("model_max_length", json!(512)),
        ("clean_up_tokenization_spaces", json!(false)),
        ("tokenizer_class", json!("PreTrainedTokenizerFast")),
    ] {
        assert_eq!(tc[k], v, "tokenizer_config.json {k}");
    }
    assert_eq!(
        tc["added_tokens_decoder"]["2"],
        json!({"content": "</s>", "lstrip": false, "normalized": false, "rstrip": false,
               "single_word": false, "special": true})
    );
    assert_eq!(tc["added_tokens_decoder"].as_object().unwrap().len(), 3);
    assert_eq!(
        read_json(&out.join("special_tokens_map.json")),
        json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"})
    );
    let gen = read_json(&out.join("generation_config.json"));
    assert_eq!(
        (
            &gen["bos_token_id"],
            &gen["eos_token_id"],
            &gen["pad_token_id"]
        ),
        (&json!(1), &json!(2), &json!(0))
    );
    // convert keeps the source's dtype (f32 here), and the directory reads back with the chat
    // template; --dtype picks another.
    assert_eq!(
        read_json(&out.join("config.json"))["torch_dtype"],
        json!("float32")
    );
    let bf16 = d.path().join("bf16");
    let (g, b) = (gguf.to_str().unwrap(), bf16.to_str().unwrap());
    let (ok, _, stderr) = ddp_run(&["convert", "--dtype", "bf16", g, b]);
    assert!(ok, "{stderr}");
    assert_eq!(stored_dtypes(&bf16.join("model.safetensors")), vec!["BF16"]);
    let back = ddp::io::open_model(&out).unwrap();
    let t = back.tokenizer.as_ref().unwrap();
    assert_eq!(t.meta.chat_template.as_deref(), Some(TEMPLATE));
    assert_eq!(t.encode("Once upon a time", true).unwrap()[0], 1);
}

/// stories260k in bf16 as an HF directory with the files a Hub model has: a
/// tokenizer_config.json with a chat template and a key of its own, a generation_config.json
/// and a README whose front matter states the licence.
fn hub_like_source(dir: &Path) {
    stories_as(WeightDtype::BF16, dir);
    let tc = json!({"chat_template": TEMPLATE, "custom_key": "kept", "bos_token": "<s>",
                    "tokenizer_class": "PreTrainedTokenizerFast"});
    fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
    let gen = json!({"bos_token_id": 1, "eos_token_id": 2, "temperature": 0.3});
    fs::write(dir.join("generation_config.json"), gen.to_string()).unwrap();
    fs::write(dir.join("README.md"), "---\nlicense: mit\n---\n# stories\n").unwrap();
}

fn recipe(source: &Path, eval: &Path, slice_dtype: &str) -> String {
    format!(
        r#"
name = "dropin"
[model]
source = "{model}"
[stages.load]
kind = "load"
model = "${{model.source}}"
[stages.gate-insert]
kind = "gate-insert"
after = ["load"]
sparsity = 0.5
[stages.oneshot]
kind = "oneshot"
after = ["gate-insert"]
method = "magnitude"
[stages.threshold]
kind = "threshold"
after = ["oneshot"]
rule = "uniform"
[stages.slice]
kind = "slice"
after = ["threshold"]
dtype = "{slice_dtype}"
[stages.evaluate]
kind = "evaluate"
after = ["slice"]
data = "{eval}"
seq_len = 64
max_tokens = 512
cloze_items = 0
[stages.export]
kind = "export"
inputs = {{ model = "slice", evaluation = "evaluate" }}
recipe = "${{recipe.name}}"
base_model = "karpathy/tinyllamas"
formats = ["hf", "gguf"]
gguf_type = "f32"
"#,
        model = source.display(),
        eval = eval.display(),
    )
}

struct Run {
    _d: tempfile::TempDir,
    root: PathBuf,
    recipe: PathBuf,
    source: PathBuf,
    summary: engine::Summary,
}

fn run_recipe(slice_dtype: &str) -> Run {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().to_path_buf();
    let source = root.join("source");
    hub_like_source(&source);
    let eval = fixtures().join("corpora/sotu/1790_george_washington_n.txt");
    let recipe = root.join("dropin.toml");
    fs::write(&recipe, self::recipe(&source, &eval, slice_dtype)).unwrap();
    let summary = run_at(&root, &recipe);
    Run {
        _d: d,
        root,
        recipe,
        source,
        summary,
    }
}

#[test]
fn slice_and_export_write_the_directory_a_user_expects() {
    let run = run_recipe("source");
    for res in &run.summary.results {
        assert_eq!(res.outcome, Outcome::Ran, "{}: {:?}", res.name, res.outcome);
    }
    let keys: std::collections::BTreeMap<&str, &str> = run
        .summary
        .results
        .iter()
        .map(|r| (r.name.as_str(), r.key.as_str()))
        .collect();
    let out = run.root.join("out/dropin");
    let (sliced, shipped) = (out.join("slice/model"), out.join("export/model"));
    // The source's dtype by default.
    assert_eq!(
        stored_dtypes(&sliced.join("model.safetensors")),
        vec!["BF16"]
    );
    let cfg = read_json(&sliced.join("config.json"));
    assert_eq!(cfg["torch_dtype"], json!("bfloat16"));
    // Tokenizer files: the source's config carried (its own key and template), the added
    // tokens from tokenizer.json; generation_config.json as the source's.
    let tc = read_json(&sliced.join("tokenizer_config.json"));
    assert_eq!(tc["chat_template"], json!(TEMPLATE));
    assert_eq!(tc["custom_key"], json!("kept"));
    assert_eq!(tc["eos_token"], json!("</s>"));
    assert_eq!(tc["added_tokens_decoder"]["0"]["content"], json!("<unk>"));
    assert_eq!(
        read_json(&sliced.join("generation_config.json")),
        read_json(&run.source.join("generation_config.json"))
    );
    // config.json's ddp block.
    let files = ddp::io::open_model(&sliced).unwrap();
    let c = &files.config;
    let block = &cfg["ddp"];
    assert_eq!(block["source"], json!(run.source.display().to_string()));
    assert_eq!(block["method"], json!("magnitude"));
    assert_eq!(block["target_sparsity"], json!(0.5));
    assert_eq!(block["mask_rule"], json!("uniform"));
    assert_eq!(block["source_params"], json!(292_800));
    let params = ddp::model::accounting::count(c).total;
    assert_eq!(block["kept"]["params"], json!(params));
    assert_eq!(
        block["kept"]["heads"],
        json!(vec![c.num_attention_heads; 5])
    );
    assert_eq!(
        block["kept"]["kv_heads"],
        json!(vec![c.num_key_value_heads; 5])
    );
    assert_eq!(
        block["kept"]["intermediate_size"],
        json!(vec![c.intermediate_size; 5])
    );
    assert!(c.intermediate_size < 172, "{}", c.intermediate_size);
    // The card of the slice, and the export's with the evaluation.
    let card = fs::read_to_string(sliced.join("README.md")).unwrap();
    assert!(card.starts_with("---\nlicense: \"mit\"\n"), "{card}");
    let shipped_card = fs::read_to_string(shipped.join("README.md")).unwrap();
    eprintln!("{shipped_card}");
    for want in [
        "license: \"mit\"\nbase_model: \"karpathy/tinyllamas\"\ntags:\n- pruned\n- ddp\npipeline_tag: text-generation\nlibrary_name: transformers\n---",
        &format!("- Source: `{}`", run.source.display()),
        "- Recipe: `dropin`",
        "- Method: magnitude, target sparsity 0.5",
        "mask rule `uniform`",
        &format!("`slice` (slice): `{}`", keys["slice"]),
        &format!("`oneshot` (oneshot): `{}`", keys["oneshot"]),
        &format!("`evaluate` (evaluate): `{}`", keys["evaluate"]),
        &format!(
            "| 0-4 | {} | {} | {} |",
            c.num_attention_heads, c.num_key_value_heads, c.intermediate_size
        ),
        "# karpathy/tinyllamas, pruned with ddp",
        "| source | 8 | 4 | 172 |",
        "## Evaluation",
        "stored in bfloat16",
    ] {
        assert!(shipped_card.contains(want), "the card lacks {want:?}");
    }
    let ppl = run
        .summary
        .results
        .iter()
        .find(|r| r.name == "evaluate")
        .unwrap()
        .metrics["perplexity"];
    assert!(
        shipped_card.contains(&format!("{ppl:.2}")),
        "perplexity {ppl} not in the card"
    );
    // Shipped files are the slice's (hard links), the card aside.
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let ino = |p: PathBuf| fs::metadata(p).unwrap().ino();
        assert_eq!(
            ino(sliced.join("model.safetensors")),
            ino(shipped.join("model.safetensors"))
        );
    }
    transformers_check(&shipped, &files, "torch.bfloat16");
    gguf_check(&out.join("export/model.gguf"), &shipped, "llama");
    // dtype = "f16" reruns slice and what follows it only.
    fs::write(
        &run.recipe,
        recipe(
            &run.source,
            &fixtures().join("corpora/sotu/1790_george_washington_n.txt"),
            "f16",
        ),
    )
    .unwrap();
    let s2 = run_at(&run.root, &run.recipe);
    let ran: Vec<&str> = s2
        .results
        .iter()
        .filter(|x| x.outcome == Outcome::Ran)
        .map(|x| x.name.as_str())
        .collect();
    assert_eq!(ran, vec!["slice", "evaluate", "export"]);
    assert_eq!(
        stored_dtypes(&shipped.join("model.safetensors")),
        vec!["F16"]
    );
    assert_eq!(
        read_json(&shipped.join("config.json"))["torch_dtype"],
        json!("float16")
    );
}

/// The export's model.gguf (f32) is `arch`, carries the chat template, names its source and
/// computes the shipped directory's logits.
fn gguf_check(gguf: &Path, dir: &Path, arch: &str) {
    use ddp::io::gguf::{GgufFile, Value};
    let f = GgufFile::open(gguf).unwrap();
    assert_eq!(
        f.get("general.architecture"),
        Some(&Value::Str(arch.into()))
    );
    assert_eq!(
        f.get("tokenizer.chat_template"),
        Some(&Value::Str(TEMPLATE.into()))
    );
    assert_eq!(f.get("ddp.method"), Some(&Value::Str("magnitude".into())));
    let (ids, _, _) = golden("stories260k.safetensors");
    let want = logits(&model(&ddp::io::open_model(dir).unwrap()), &ids);
    let got = logits(&model(&ddp::io::open_model(gguf).unwrap()), &ids);
    let diff = max_abs_diff(&got, &want);
    assert!(diff <= 1e-5, "model.gguf's logits differ by {diff}");
}

const TRANSFORMERS_DROPIN: &str = r#"
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
d, texts, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
tok = AutoTokenizer.from_pretrained(d)
m = AutoModelForCausalLM.from_pretrained(d)
prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
ids = [tok(t)["input_ids"] for t in texts]
with torch.no_grad():
    lg = m(torch.tensor([ids[0]])).logits[0].float()
lg.numpy().astype("<f4").tofile(out)
print(json.dumps({"dtype": str(m.dtype), "prompt": prompt, "ids": ids, "tokenizer": type(tok).__name__}))
"#;

/// transformers loads `dir` (AutoTokenizer, AutoModelForCausalLM) in `dtype`, applies its chat
/// template, tokenizes as ddp does and gives ddp's logits within bf16's error; skipped with a
/// message when the test venv is absent.
fn transformers_check(dir: &Path, files: &ddp::io::ModelFiles, dtype: &str) {
    let py = Path::new("/work/torchenv/bin/python");
    if !py.exists() {
        eprintln!(
            "skipping the transformers check: {} is absent",
            py.display()
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (script, out) = (tmp.path().join("dropin.py"), tmp.path().join("logits.f32"));
    fs::write(&script, TRANSFORMERS_DROPIN).unwrap();
    let texts = [
        "Once upon a time, there was a little dog.",
        "Lily said: \"Hi!\" 123",
    ];
    let run = std::process::Command::new(py)
        .arg(&script)
        .arg(dir)
        .arg(serde_json::to_string(&texts).unwrap())
        .arg(&out)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "transformers failed on {}: {stderr}",
        dir.display()
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    eprintln!("transformers: {}", stdout.trim());
    let r: Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    assert_eq!(r["dtype"], json!(dtype));
    assert_eq!(r["prompt"], json!("<|user|>Hi\n<|assistant|>"));
    let tok = files.tokenizer().unwrap();
    for (i, t) in texts.iter().enumerate() {
        let ours: Vec<u32> = tok.encode(t, true).unwrap();
        assert_eq!(r["ids"][i], json!(ours), "tokens of {t:?}");
    }
    let got: Vec<f32> = fs::read(&out)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let ids: Vec<i64> = tok
        .encode(texts[0], true)
        .unwrap()
        .iter()
        .map(|&x| x as i64)
        .collect();
    let want = logits(&model(files), &ids);
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = max_abs_diff(&got, &want);
    eprintln!("transformers in {dtype} vs ddp in f32: max |logit| {scale}, diff {diff}");
    assert!(diff <= 0.05 * scale, "logits differ by {diff}");
}

#[test]
fn the_card_of_a_per_layer_model_lists_its_layers_and_says_what_loads_it() {
    use ddp::io::model_card::{CardFacts, SourceInfo};
    use ddp::model::config::LayerShape;
    let l = |h, kv, f| LayerShape {
        num_attention_heads: h,
        num_key_value_heads: kv,
        intermediate_size: f,
        ..Default::default()
    };
    let facts = CardFacts {
        source: "x.gguf".into(),
        source_info: SourceInfo {
            license: Some("mit".into()),
            ..Default::default()
        },
        dtype: "float16".into(),
        params_source: 1000,
        params: 600,
        source_layer: l(9, 3, 1536),
        layers: vec![l(9, 3, 1512), l(6, 2, 1051), l(6, 2, 1051), l(3, 1, 1200)],
        standard: false,
        ..Default::default()
    };
    let card = facts.render(&[]);
    assert!(
        card.contains("| 0 | 9 | 3 | 1512 |\n| 1-2 | 6 | 2 | 1051 |\n| 3 | 3 | 1 | 1200 |\n"),
        "{card}"
    );
    assert!(card.contains("`ddp_layer_shapes`") && !card.contains("AutoModelForCausalLM"));
    assert!(
        !card.contains("base_model:"),
        "no base_model without a known repository"
    );
    let block = facts.config_block();
    assert_eq!(block["kept"]["heads"], json!([9, 6, 6, 3]));
    assert_eq!(
        block["kept"]["intermediate_size"],
        json!([1512, 1051, 1051, 1200])
    );
    assert_eq!(block["kept"]["params_fraction"], json!(0.6));
}

#[test]
fn a_chat_template_jinja_file_is_the_template_when_tokenizer_config_has_none() {
    let d = tempfile::tempdir().unwrap();
    fs::write(
        d.path().join("tokenizer_config.json"),
        r#"{"bos_token": "<s>"}"#,
    )
    .unwrap();
    fs::write(d.path().join("chat_template.jinja"), TEMPLATE).unwrap();
    let m = ddp::io::tokenizer::TokenizerMeta::from_hf_dir(d.path()).unwrap();
    assert_eq!(m.chat_template.as_deref(), Some(TEMPLATE));
    fs::write(d.path().join("tokenizer_config.json"), "{not json").unwrap();
    let e = ddp::io::tokenizer::TokenizerMeta::from_hf_dir(d.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tokenizer_config.json") && e.contains("invalid JSON"),
        "{e}"
    );
}

#[test]
fn a_chat_template_jinja_file_reaches_the_gguf_of_its_directory() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("hf");
    stories_as(WeightDtype::F32, &dir);
    fs::write(dir.join("chat_template.jinja"), TEMPLATE).unwrap();
    let out = d.path().join("m.gguf");
    let (ok, _, stderr) = ddp_run(&[
        "convert",
        "--to",
        "gguf",
        dir.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let f = ddp::io::gguf::GgufFile::open(&out).unwrap();
    assert_eq!(
        f.get("tokenizer.chat_template"),
        Some(&ddp::io::gguf::Value::Str(TEMPLATE.into()))
    );
}
