//! llama.cpp's perplexity protocol (`ddp-run eval --protocol llama.cpp`): what it scores, checked
//! here everywhere, and, when a llama.cpp build is present (tools/build_llama_cpp.sh, or
//! DDP_LLAMA_CPP_BIN), that llama-perplexity prints the same perplexity and `±` on the same
//! F32 GGUF and text.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

use ddp::eval::perplexity::{self, Protocol};
use ddp::eval::score::Scorer;
use ddp::eval::suite::{build_suite, SuiteSpec};

#[test]
fn chunks_are_whole_and_score_their_second_half() {
    // 1000 tokens, -c 128: llama.cpp's n_chunk = 1000 / 128 = 7, the last 104 tokens dropped;
    // its first = 64 reads logits 64..126, which predict tokens 65..127: 63 per chunk.
    let c = perplexity::llama_cpp_chunks(1000, 128);
    assert_eq!(c.len(), 7);
    assert_eq!(c[0], (0, 128, 65));
    assert_eq!(c[6], (768, 896, 65));
    assert!(c.iter().all(|&(s, e, f)| e - s - f == 128 - 128 / 2 - 1));
    // An odd context: first = 64 of 129, so 64 predictions per chunk.
    assert_eq!(
        perplexity::llama_cpp_chunks(300, 129),
        [(0, 129, 65), (129, 258, 65)]
    );
    assert!(perplexity::llama_cpp_chunks(127, 128).is_empty());
}

#[test]
fn each_chunk_starts_with_bos_when_the_tokenizer_adds_one() {
    let ids: Vec<u32> = (10..30).collect();
    let with = perplexity::llama_cpp_requests(&ids, 8, Some(1));
    assert_eq!(with.len(), 2);
    assert_eq!(with[0].ids, [1, 11, 12, 13, 14, 15, 16, 17]);
    assert_eq!(with[1].ids, [1, 19, 20, 21, 22, 23, 24, 25]);
    assert_eq!((with[0].from, with[1].from), (5, 5));
    // Without BOS (e.g. SmolLM2's GPT-2 vocabulary) the chunk keeps its first token.
    let without = perplexity::llama_cpp_requests(&ids, 8, None);
    assert_eq!(without[1].ids, (18..26).collect::<Vec<u32>>());
}

#[test]
fn the_standard_error_is_llama_cpps_over_tokens() {
    // NLLs 1, 2, 3, 6: mean 3, mean of squares 12.5, variance 3.5, / (n - 1) -> sqrt(7/6).
    let (sum, sum2) = (12.0, 1.0 + 4.0 + 9.0 + 36.0);
    let se = perplexity::token_stderr(sum, sum2, 4).unwrap();
    assert!((se - (3.5f64 / 3.0).sqrt()).abs() < 1e-12, "{se}");
    assert_eq!(perplexity::token_stderr(2.0, 4.0, 1), None);
    assert_eq!(
        perplexity::token_stderr(4.0, 8.0, 2),
        None,
        "no spread: llama.cpp prints none"
    );
}

/// A suite spec for `text` with llama.cpp's protocol.
fn spec(text: &Path, seq_len: usize, max_tokens: usize, stride: usize) -> SuiteSpec {
    SuiteSpec {
        data: Some(text.to_str().unwrap().into()),
        seq_len,
        stride,
        protocol: Protocol::LlamaCpp,
        max_tokens,
        cloze_items: 0,
        cloze_choices: 4,
        min_words: 40,
        tasks: vec![],
        task_limit: 0,
        max_len: 1024,
        seed: 0,
    }
}

#[test]
fn the_stream_is_the_text_after_bos_and_scores_as_recomputed_here() {
    let files = fixture("stories260k");
    let tok = files.tokenizer.as_ref().unwrap();
    assert!(
        tok.add_bos,
        "stories260k's sentencepiece vocabulary adds BOS"
    );
    let bos = tok.bos_id.unwrap();
    let text = fixtures().join("corpora/moby-dick.txt");
    let suite = build_suite(&spec(&text, 128, 1000, 0), tok, &cache()).unwrap();
    let input = suite.perplexity.unwrap();
    // As common_tokenize(.., add_special = true) on the file: BOS, then the text's tokens.
    let body = std::fs::read_to_string(&text).unwrap();
    let want = tok.encode(&body[..20_000], false).unwrap();
    assert_eq!(input.ids.len(), 1000);
    assert_eq!(input.ids[0], bos);
    assert_eq!(input.ids[1..], want[..999]);
    assert_eq!(input.bos, Some(bos));

    // The protocol's numbers from full logits here: chunk i is BOS + ids[128i+1..128(i+1)],
    // scoring positions 65..127.
    let m = model(&files);
    let p = perplexity::llama_cpp(&Scorer::new(&m), &input.ids, 128, Some(bos), |_| {});
    let (mut sum, mut sum2, mut n) = (0.0, 0.0, 0);
    for chunk in input.ids.chunks_exact(128) {
        let mut c = chunk.to_vec();
        c[0] = bos;
        for lp in &crate::eval::logprobs(&m, &c)[64..] {
            (sum, sum2, n) = (sum - lp, sum2 + lp * lp, n + 1);
        }
    }
    assert_eq!((p.windows, p.scored_tokens, n), (7, 7 * 63, 7 * 63));
    assert_eq!(p.protocol, Protocol::LlamaCpp);
    let mean: f64 = sum / n as f64;
    assert!((p.mean_nll - mean).abs() < 1e-5, "{} vs {mean}", p.mean_nll);
    let se = perplexity::token_stderr(sum, sum2, n).unwrap() * mean.exp();
    assert!((p.perplexity_stderr.unwrap() - se).abs() < 1e-4 * se);
}

#[test]
fn the_protocol_names_what_it_cannot_do() {
    let files = fixture("stories260k");
    let tok = files.tokenizer.as_ref().unwrap();
    let text = fixtures().join("corpora/moby-dick.txt");
    let err = |s: SuiteSpec| build_suite(&s, tok, &cache()).unwrap_err().to_string();
    // llama-perplexity itself refuses fewer than two chunks' worth of tokens.
    let e = err(spec(&text, 128, 200, 0));
    assert!(
        e.contains("2 x seq_len = 256") && e.contains("200 tokens"),
        "{e}"
    );
    let e = err(spec(&text, 128, 1000, 64));
    assert!(e.contains("stride 64") && e.contains("llama.cpp"), "{e}");
    let e = err(spec(&text, 2, 1000, 0));
    assert!(e.contains("seq_len 2"), "{e}");
    let (ok, _, e) = ddp_run(&["eval", "--model", "x", "--protocol", "llamacpp"]);
    assert!(!ok && e.contains("llama.cpp"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Against the real runtime.

/// The llama.cpp tools: $DDP_LLAMA_CPP_BIN, else where tools/build_llama_cpp.sh puts them; None
/// (and a message saying how to build them) when llama-perplexity is not there.
fn llama_cpp_bin() -> Option<PathBuf> {
    let dir = match std::env::var_os("DDP_LLAMA_CPP_BIN") {
        Some(d) => PathBuf::from(d),
        None => {
            let root = std::env::var_os("DDP_LLAMA_CPP")
                .map(PathBuf::from)
                .or_else(|| {
                    Some(PathBuf::from(std::env::var_os("HOME")?).join(".cache/ddp-llama.cpp"))
                })?;
            root.join(script_version()).join("bin")
        }
    };
    if dir.join("llama-perplexity").is_file() {
        return Some(dir);
    }
    eprintln!(
        "skipping the llama.cpp comparison: no llama-perplexity in {}; build it with tools/build_llama_cpp.sh (about 6 minutes on 2 cores, cached) or set DDP_LLAMA_CPP_BIN",
        dir.display()
    );
    None
}

/// The llama-cpp-python version the build script pins (its `VERSION=` line).
fn script_version() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/build_llama_cpp.sh");
    let text = std::fs::read_to_string(&script).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION="))
        .expect("tools/build_llama_cpp.sh sets VERSION=")
        .trim()
        .to_string()
}

/// One comparison: the GGUF `make` writes into a scratch directory (given the llama.cpp
/// tools), scored with context `ctx` over the first `chunks` chunks of the text file `text`.
/// Pruned models join the list as cases whose `make` runs `ddp-run slice`/`convert --to gguf`.
struct Case {
    name: &'static str,
    make: fn(bin: &Path, scratch: &Path) -> PathBuf,
    text: fn() -> PathBuf,
    ctx: usize,
    chunks: usize,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "stories260k (F32 GGUF fixture)",
            make: |_, _| fixtures().join("stories260k.gguf"),
            text: || fixtures().join("corpora/moby-dick.txt"),
            ctx: 128,
            chunks: 16,
        },
        Case {
            name: "SmolLM2-135M (its Q4_1 GGUF dequantised to F32 by llama-quantize)",
            make: |bin, scratch| f32_by_llama_quantize(bin, SMOLLM2, scratch),
            text: || fixtures().join("corpora/sotu/1999_william_j_clinton_d.txt"),
            ctx: 512,
            chunks: 4,
        },
        Case {
            name: "stories260k, uniform pruned, ddp's F32 GGUF (llama)",
            make: |_, d| pruned_gguf(&fixture("stories260k"), &[2; 5], &[120; 5], true, d),
            text: || fixtures().join("corpora/moby-dick.txt"),
            ctx: 128,
            chunks: 16,
        },
        Case {
            name: "stories260k, per-layer pruned, ddp's F32 GGUF (deci)",
            make: |_, d| {
                let f = fixture("stories260k");
                pruned_gguf(&f, &[3, 1, 2, 4, 2], &[150, 100, 40, 60, 172], false, d)
            },
            text: || fixtures().join("corpora/moby-dick.txt"),
            ctx: 128,
            chunks: 16,
        },
        Case {
            name: "SmolLM2-135M, uniform pruned, ddp's F32 GGUF (llama)",
            make: |_, d| pruned_gguf(&open(SMOLLM2), &[2; 30], &[1024; 30], true, d),
            text: || fixtures().join("corpora/sotu/1999_william_j_clinton_d.txt"),
            ctx: 512,
            chunks: 2,
        },
        Case {
            name: "SmolLM2-135M, per-layer pruned, ddp's F32 GGUF (deci)",
            make: |_, d| {
                let groups: Vec<usize> = (0..30).map(|l| [3, 2, 1][l % 3]).collect();
                let channels: Vec<usize> = (0..30).map(|l| [1512, 1280, 1051][l % 3]).collect();
                pruned_gguf(&open(SMOLLM2), &groups, &channels, false, d)
            },
            text: || fixtures().join("corpora/sotu/1999_william_j_clinton_d.txt"),
            ctx: 512,
            chunks: 2,
        },
    ]
}

/// `files`' model sliced to the first `groups[l]` KV groups (their query heads with them) and
/// `channels[l]` FFN channels of each layer, written by ddp as an F32 GGUF.
fn pruned_gguf(
    files: &ddp::io::ModelFiles,
    groups: &[usize],
    channels: &[usize],
    uniform: bool,
    dir: &Path,
) -> PathBuf {
    let c = &files.config;
    let per_group = c.num_attention_heads / c.num_key_value_heads;
    let keep = |n: usize, k: usize| (0..n).map(|i| if i < k { 1.0 } else { 0.0 }).collect();
    let layers = (0..c.num_hidden_layers)
        .map(|l| ddp::prune::mask::LayerMask {
            heads: keep(c.num_attention_heads, groups[l] * per_group),
            channels: keep(c.intermediate_size, channels[l]),
            experts: vec![],
        })
        .collect();
    let mask = ddp::prune::mask::FinalMask { layers };
    let sliced = ddp::prune::slice::slice(c, files.weights.as_ref(), &mask, uniform, 1)
        .unwrap_or_else(|e| panic!("{e}"));
    let out = dir.join("pruned-f32.gguf");
    ddp::io::gguf_write::write_model_gguf(
        &out,
        files,
        &sliced.config,
        &sliced.tensors,
        ddp::io::quants::GgmlType::F32,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    out
}

/// `llama-quantize --allow-requantize SRC OUT F32` on the GGUF the source spec names.
fn f32_by_llama_quantize(bin: &Path, spec: &str, scratch: &Path) -> PathBuf {
    let src = ddp::io::source::resolve(spec, &cache()).unwrap_or_else(|e| panic!("{e}"));
    let out = scratch.join("f32.gguf");
    let run = Command::new(bin.join("llama-quantize"))
        .arg("--allow-requantize")
        .args([&src, &out])
        .arg("F32")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "llama-quantize failed on {}: {}",
        src.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

/// llama-perplexity's (chunks, PPL, ±) as it prints them, on 2 threads, computing as ddp does:
/// without flash attention and with an F32 KV cache. By default its CPU flash-attention kernel
/// and F16 cache round through f16 (measured, stories260k -c 128: 67.7695 by default, 67.7456
/// with `-fa off`, 67.7408 with `-fa off -ctk f32 -ctv f32`, ddp 67.7408), and a tolerance
/// loose enough for that would miss an off-by-one in the scored positions.
///
/// This llama.cpp's logger drops its last lines now and then when the process exits (its
/// issue 22142): `-v` makes more lines follow the estimate, and a run that lost it is repeated.
fn llama_perplexity(
    bin: &Path,
    gguf: &Path,
    text: &Path,
    ctx: usize,
    chunks: usize,
) -> (usize, f64, f64) {
    const KEY: &str = "Final estimate: PPL = ";
    let mut log = String::new();
    for _ in 0..3 {
        let run = Command::new(bin.join("llama-perplexity"))
            .arg("-m")
            .arg(gguf)
            .arg("-f")
            .arg(text)
            .args(["-c", &ctx.to_string(), "--chunks", &chunks.to_string()])
            .args(["-t", "2", "-fa", "off", "-ctk", "f32", "-ctv", "f32", "-v"])
            .output()
            .unwrap();
        log = String::from_utf8_lossy(&run.stderr).into_owned()
            + &String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "llama-perplexity failed on {}: {log}",
            gguf.display()
        );
        if log.contains(KEY) {
            break;
        }
        eprintln!("llama-perplexity's output lost its estimate; running it again");
    }
    let line = |key: &str| {
        let l = log.lines().find(|l| l.contains(key));
        let l = l.unwrap_or_else(|| panic!("no `{key}` in llama-perplexity's output: {log}"));
        l[l.find(key).unwrap() + key.len()..].to_string()
    };
    // "perplexity: calculating perplexity over 8 chunks, n_ctx=512, ..."
    let n = line("calculating perplexity over ")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // "Final estimate: PPL = 19.6740 +/- 0.53210"
    let fin = line(KEY);
    let (ppl, se) = fin.split_once(" +/- ").unwrap();
    let (ppl, se) = (ppl.trim().parse().unwrap(), se.trim().parse().unwrap());
    (n, ppl, se)
}

#[test]
fn llama_perplexity_agrees_with_ddp_on_the_same_gguf() {
    let Some(bin) = llama_cpp_bin() else { return };
    for case in cases() {
        let scratch = tempfile::tempdir().unwrap();
        let gguf = (case.make)(&bin, scratch.path());
        let text = (case.text)();
        let (n, want, want_se) = llama_perplexity(&bin, &gguf, &text, case.ctx, case.chunks);
        assert_eq!(
            n, case.chunks,
            "{}: the text is too short for {} chunks",
            case.name, case.chunks
        );
        let (ok, out, err) = ddp_run(&[
            "eval",
            "--model",
            gguf.to_str().unwrap(),
            "--text",
            text.to_str().unwrap(),
            "--protocol",
            "llama.cpp",
            "--seq-len",
            &case.ctx.to_string(),
            "--max-tokens",
            &(case.ctx * case.chunks).to_string(),
            "--json",
        ]);
        assert!(ok, "{}: {err}", case.name);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let p = &v["perplexity"];
        let (got, got_se) = (
            p["perplexity"].as_f64().unwrap(),
            p["perplexity_stderr"].as_f64().unwrap(),
        );
        println!(
            "{}: llama-perplexity {want:.4} +/- {want_se:.5}, ddp {got:.4} +/- {got_se:.5}",
            case.name
        );
        assert_eq!(p["windows"], case.chunks, "{}", case.name);
        // llama.cpp prints 4 decimals (5 for the ±) and sums in another order.
        assert!(
            (got - want).abs() / want < 1e-4,
            "{}: ddp {got} vs llama.cpp {want}",
            case.name
        );
        assert!(
            (got_se - want_se).abs() < 1e-4 * want_se + 1e-5,
            "{}: ± {got_se} vs {want_se}",
            case.name
        );
    }
}
