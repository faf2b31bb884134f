//! Commands that measure: eval (quality) and bench (speed, against PyTorch and llama.cpp).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde::Serialize;

use super::{progress, Global};
use ddp::backend::run_on;
use ddp::bench::{self, dense, train, CompareTask, Protocol};
use ddp::eval::perplexity::{Perplexity, Protocol as PplProtocol};
use ddp::eval::suite::{build_suite, EvalTask, SuiteSpec};
use ddp::io::open_source;

/// `ddp-run eval`.
#[derive(clap::Args)]
pub struct EvalArgs {
    #[arg(long)]
    model: String,
    /// Text source: a file, a directory, DIR/*.EXT, a .jsonl with `text`, or npm:PKG@VER:GLOB.
    #[arg(long)]
    text: Option<String>,
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// 0: non-overlapping windows; else strided windows scoring each token once.
    #[arg(long, default_value_t = 0)]
    stride: usize,
    /// How the perplexity cuts the text: `windows` (ddp's, with --stride) or `llama.cpp`
    /// (llama-perplexity's: chunks of --seq-len (its -c), the second half of each scored, BOS
    /// at each chunk's start when the tokenizer adds one; its `±`). llama-perplexity reads
    /// the whole file: give it `--chunks` = the chunks printed here.
    #[arg(long, default_value = "windows",
          value_parser = clap::builder::PossibleValuesParser::new(PplProtocol::NAMES))]
    protocol: String,
    /// Only the first N tokens of the text (llama.cpp: BOS included).
    #[arg(long, default_value_t = 8192)]
    max_tokens: usize,
    /// Items of each built-in cloze task drawn from the text (0: none).
    #[arg(long, default_value_t = 0)]
    cloze_items: usize,
    /// Multiple-choice task files (JSONL), NAME=PATH or PATH.
    #[arg(long = "task")]
    tasks: Vec<String>,
    /// First N items of each task file (0: all).
    #[arg(long, default_value_t = 0)]
    task_limit: usize,
    /// Longest sequence scored for cloze items and tasks (contexts are cut from the left): the
    /// `evaluate` stage's `max_len`.
    #[arg(long, default_value_t = 1024)]
    max_len: usize,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

/// `ddp-run bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    #[arg(long)]
    model: String,
    #[arg(long, default_value_t = 512)]
    prompt_len: usize,
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Write the figures as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also measure PyTorch eager (transformers) on the same model and protocol; skipped,
    /// with the reason, when torch is not installed.
    #[arg(long)]
    torch: bool,
    /// Also measure llama.cpp's llama-bench on the same weights in F32 (a GGUF model; DIR
    /// is a llama.cpp build with llama-bench and llama-quantize), one repeat after each of
    /// ddp's.
    #[arg(long, value_name = "DIR")]
    llama_cpp: Option<PathBuf>,
    /// Measure this model against the other one (e.g. dense vs pruned), alternating in one
    /// run, with the ideal speed-up from FLOPs per token.
    #[arg(long)]
    vs: Option<String>,
    /// With --vs: more prompt lengths (decode follows the first), e.g. 128,512.
    #[arg(long, value_delimiter = ',')]
    prompt_lens: Vec<usize>,
    /// With --vs: more batch sizes, e.g. 1,8.
    #[arg(long, value_delimiter = ',')]
    batches: Vec<usize>,
    /// Time the anneal-train step instead (per phase; with --torch beside PyTorch's, the
    /// engines alternating in --repeats rounds of --steps steps).
    #[arg(long)]
    train: bool,
    /// With --train: online (the dense model every step) or cached (top-k rows).
    #[arg(long, default_value = "online", value_parser = ["online", "cached"])]
    teacher: String,
    /// With --train: tokens per block.
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// With --train: steps per round and engine.
    #[arg(long, default_value_t = 3)]
    steps: usize,
}

/// Perplexity and tasks of one model: the `evaluate` stage's suite, printed or as JSON.
pub fn eval(a: EvalArgs, g: &Global) -> Result<ExitCode> {
    let files = open_source(&a.model, &g.cache)?;
    let spec = SuiteSpec {
        data: a.text,
        seq_len: a.seq_len,
        stride: a.stride,
        protocol: PplProtocol::parse(&a.protocol)?,
        max_tokens: a.max_tokens,
        cloze_items: a.cloze_items,
        cloze_choices: 4,
        min_words: 40,
        tasks: a.tasks,
        task_limit: a.task_limit,
        max_len: a.max_len,
        seed: 0,
    };
    let suite = build_suite(&spec, files.tokenizer()?, &g.cache)?;
    let bar = progress::sequences();
    let task = EvalTask {
        files: &files,
        suite: &suite,
        bar: &bar,
    };
    let r = run_on(g.device, task)?;
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("model {}", a.model);
    if let Some(p) = &r.perplexity {
        print_perplexity(p);
    }
    print!("{}", r.markdown(None));
    Ok(ExitCode::SUCCESS)
}

/// The perplexity line; llama.cpp's protocol also as llama-perplexity prints its estimate.
fn print_perplexity(p: &Perplexity) {
    match p.protocol {
        PplProtocol::Windows => println!(
            "perplexity {:.4}  (mean NLL {:.6}; {} tokens, {} windows of {} (stride {}), {} scored)",
            p.perplexity, p.mean_nll, p.tokens, p.windows, p.window, p.stride, p.scored_tokens
        ),
        PplProtocol::LlamaCpp => {
            println!(
                "perplexity {:.4}  (llama.cpp protocol: mean NLL {:.6}; {} tokens, {} chunks of {}, second halves scored: {} tokens)",
                p.perplexity, p.mean_nll, p.tokens, p.windows, p.window, p.scored_tokens
            );
            if let Some(se) = p.perplexity_stderr {
                println!("Final estimate: PPL = {:.4} +/- {:.5}", p.perplexity, se);
            }
        }
    }
}

fn write_json(path: Option<&Path>, v: &impl Serialize) -> Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_string_pretty(v)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Throughput: of one model (with its peers), of two models alternating (`--vs`), or of the
/// training step (`--train`).
pub fn bench(a: BenchArgs, g: &Global) -> Result<ExitCode> {
    if a.train {
        return bench_train(a, g);
    }
    if a.vs.is_some() {
        return bench_vs(a, g);
    }
    let files = open_source(&a.model, &g.cache)?;
    let p = dense::DenseProtocol {
        prompt_len: a.prompt_len,
        decode_tokens: a.decode_tokens,
        batch: a.batch,
        repeats: a.repeats,
        warmup: a.warmup,
    };
    let bar = progress::loading(&files);
    let r = dense::run(g.device, &files, &p, a.torch, a.llama_cpp.as_deref(), &bar)?;
    println!("model    {}", a.model);
    print!("{}", r.markdown());
    write_json(a.json.as_deref(), &r.json())?;
    Ok(ExitCode::SUCCESS)
}

fn bench_train(a: BenchArgs, g: &Global) -> Result<ExitCode> {
    let files = open_source(&a.model, &g.cache)?;
    let p = train::TrainProtocol {
        seq_len: a.seq_len,
        batch: a.batch,
        steps: a.steps,
        rounds: a.repeats.max(1),
        warmup: a.warmup,
        teacher: a.teacher,
        topk: 64,
    };
    let bar = progress::rounds("rounds");
    let r = train::run(g.device, &files, &p, a.torch, &bar)?;
    bar.finish_and_clear();
    println!("model    {}", a.model);
    print!("{}", train::markdown(&p, &r.build, &r.engines));
    if let Some(why) = &r.torch_skipped {
        println!("\nPyTorch comparison skipped: {why}");
    }
    write_json(a.json.as_deref(), &r)?;
    Ok(ExitCode::SUCCESS)
}

fn bench_vs(a: BenchArgs, g: &Global) -> Result<ExitCode> {
    let other = a.vs.clone().unwrap_or_default();
    let files = open_source(&a.model, &g.cache)?;
    let other_files = open_source(&other, &g.cache)?;
    let or_one = |v: Vec<usize>, x: usize| if v.is_empty() { vec![x] } else { v };
    let protocol = Protocol {
        prompt_lens: or_one(a.prompt_lens, a.prompt_len),
        batches: or_one(a.batches, a.batch),
        decode_tokens: a.decode_tokens,
        warmup: a.warmup,
        repeats: a.repeats,
    };
    let bar = progress::rounds("runs");
    let dev = g.device.to_string();
    let task = CompareTask {
        models: vec![(a.model.as_str(), &files), (other.as_str(), &other_files)],
        protocol: &protocol,
        device: &dev,
        bar: &bar,
    };
    let c: bench::Comparison = run_on(g.device, task)?;
    bar.finish_and_clear();
    print!("{}", c.markdown());
    write_json(a.json.as_deref(), &c)?;
    Ok(ExitCode::SUCCESS)
}
