//! `ddp-run`: the command line. Parses arguments, calls the library, prints.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use ddp::backend::{run_on, BackendTask, DeviceSpec};
use ddp::engine::{self, cache::Cache};
use ddp::io::{self, source, ModelFiles};
use ddp::model::{accounting, generate, load};
use ddp::stages;

// Tensors of a few hundred KB are allocated and freed for every layer of every decoded token;
// glibc's malloc maps and unmaps them each time (a page fault per 4 KB, a third of decode time
// at a 512-token context). mimalloc keeps freed pages for reuse.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (the same index in its v2 and v3 headers).
const MI_OPTION_PURGE_DELAY: i32 = 15;

extern "C" {
    /// Part of the mimalloc library that the allocator above links.
    fn mi_option_set(option: i32, value: std::ffi::c_long);
}

/// Tells mimalloc never to hand freed memory back to the OS (a user's `MIMALLOC_PURGE_DELAY`
/// wins). By default it purges after 10 ms, and a training step's logits-sized buffers (100 MB
/// at batch 4) then came back as fresh pages the kernel zeroes on every step: 110k page faults
/// in a 4-step batch-4 run against 3k, and 56-65 against 84 tokens/s (`ddp-run bench --train
/// --batch 4 --teacher cached`). The cost: the process keeps its peak memory until it exits.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: a plain option setter of the linked allocator; any value is valid.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

#[derive(Parser)]
#[command(
    name = "ddp-run",
    version,
    about = "Structured pruning of LLMs by Deterministic Differentiable Pruning"
)]
struct Cli {
    /// Content-addressed cache (downloads, stage outputs).
    #[arg(long, global = true, env = "DDP_CACHE", default_value = "cache")]
    cache: PathBuf,
    /// Compute device: cpu, cuda[:N], tch-cpu, tch-cuda[:N].
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// The recipe (TOML).
    recipe: PathBuf,
    /// Rerun this stage (or instance) and everything downstream of it. Repeatable.
    #[arg(long)]
    force: Vec<String>,
    /// Run only this stage; its inputs must already be cached.
    #[arg(long)]
    only: Option<String>,
    /// Run this stage and what it needs, nothing after it.
    #[arg(long)]
    until: Option<String>,
    /// After a failure, keep running the branches that do not depend on it.
    #[arg(long)]
    keep_going: bool,
    /// Independent stages to run at once.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Show what would run, run nothing.
    #[arg(long)]
    dry_run: bool,
    /// Copy results into out/ instead of linking into the cache.
    #[arg(long)]
    copy_out: bool,
    /// Where results are exposed: OUT/<recipe name>/<instance>/.
    #[arg(long, default_value = "out")]
    out: PathBuf,
}

#[derive(Subcommand)]
enum CacheCmd {
    /// List complete entries.
    Ls,
    /// Disk use per stage kind.
    Du,
    /// Check every entry's files against its manifest; damaged entries are reported (and
    /// removed with --fix; a run treats them as missing anyway).
    Verify {
        #[arg(long)]
        fix: bool,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a recipe: every stage that is not cached yet (`ddp-run RECIPE.toml` is the same).
    Run(RunArgs),
    /// The expanded stage graph, and for each instance CACHED or RUN with the reason.
    Plan {
        recipe: PathBuf,
        #[arg(long)]
        force: Vec<String>,
    },
    /// What is done and what is missing, with headline metrics.
    Status { recipe: PathBuf },
    /// A stage kind's parameters, defaults and meaning.
    Explain {
        /// A stage kind; omit to list them.
        kind: Option<String>,
    },
    /// Inspect the cache.
    Cache {
        #[command(subcommand)]
        cmd: CacheCmd,
    },
    /// Remove cache entries: not referenced by the given recipes' lock files, older than N
    /// days, or the oldest until the cache fits a size.
    Gc {
        /// Keep what these recipes' lock files reference.
        recipes: Vec<PathBuf>,
        #[arg(long)]
        older_than_days: Option<f64>,
        /// Remove the oldest entries until the cache is at most this many GB.
        #[arg(long)]
        max_size_gb: Option<f64>,
        #[arg(long)]
        dry_run: bool,
    },
    /// One table over a sweep: each instance's parameters and metrics (Markdown, CSV, JSON).
    Compare {
        recipe: PathBuf,
        /// Only instances of this stage.
        #[arg(long)]
        stage: Option<String>,
        /// Show deltas against this instance.
        #[arg(long)]
        baseline: Option<String>,
        #[arg(long, default_value = "out")]
        out: PathBuf,
    },
    /// Architecture, sizes and parameter counts of a model.
    Inspect {
        /// Model: a HF directory, a .gguf file, pip:PKG==VER:PATH or hf:ORG/NAME[@REV].
        model: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Continue a prompt.
    Generate {
        #[arg(long)]
        model: String,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 32)]
        max_new_tokens: usize,
        /// 0 = greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Write a model (e.g. a GGUF) as a Hugging Face directory: f32 safetensors, config.json,
    /// tokenizer.json.
    Convert {
        model: String,
        /// Output directory.
        out: PathBuf,
    },
    /// Perplexity (and optionally cloze and multiple-choice tasks) of a model on a text: the
    /// code the `evaluate` stage runs.
    Eval {
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
        /// Only the first N tokens of the text.
        #[arg(long, default_value_t = 8192)]
        max_tokens: usize,
        /// Items of each built-in cloze task drawn from the text (0: none).
        #[arg(long, default_value_t = 0)]
        cloze_items: usize,
        /// Multiple-choice task files (JSONL), NAME=PATH or PATH.
        #[arg(long = "task")]
        tasks: Vec<String>,
        #[arg(long, default_value_t = 0)]
        task_limit: usize,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Dense forward throughput: prefill and KV-cached decode, median of repeated runs.
    Bench {
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
    },
}

/// A bar of benchmark runs or rounds on a terminal, hidden otherwise.
fn rounds_bar(what: &str) -> ProgressBar {
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(&format!("{what} {{pos}}/{{len}} [{{bar:30}}] eta {{eta}}"))
            .unwrap()
            .progress_chars("=> "),
    );
    bar
}

fn open(spec: &str, cache: &std::path::Path) -> Result<ModelFiles> {
    let path = source::resolve(spec, cache)?;
    Ok(io::open_model(&path)?)
}

fn load_bar(files: &ModelFiles) -> ProgressBar {
    let n = load::tensor_count(files.weights.as_ref());
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) && n > 50 {
        ProgressBar::new(n)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("loading {pos}/{len} tensors [{bar:30}] {per_sec} eta {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    bar
}

struct GenerateTask<'a> {
    files: &'a ModelFiles,
    prompt: &'a str,
    max_new: usize,
    sampling: generate::Sampling,
}

impl BackendTask for GenerateTask<'_> {
    type Output = ();
    fn run<B: Backend>(self, device: B::Device) -> ddp::Result<()> {
        let tok = self.files.tokenizer.as_ref().ok_or_else(|| {
            ddp::Error::Invalid(format!("{} has no tokenizer", self.files.path.display()))
        })?;
        let bar = load_bar(self.files);
        let model = load::load_model::<B>(
            &self.files.config,
            self.files.weights.as_ref(),
            &device,
            Some(&bar),
        )?;
        bar.finish_and_clear();
        let ids = tok.encode(self.prompt, true)?;
        print!("{}", self.prompt);
        let mut out: Vec<u32> = Vec::new();
        let mut shown = 0;
        use std::io::Write;
        generate::generate(
            &model,
            &ids,
            self.max_new,
            &self.sampling,
            tok.eos_id,
            None,
            |t| {
                out.push(t);
                // Decode the whole continuation each time so multi-byte characters print whole.
                if let Ok(text) = tok.decode(&out) {
                    if text.len() > shown && text.is_char_boundary(shown) {
                        print!("{}", &text[shown..]);
                        shown = text.len();
                        let _ = std::io::stdout().flush();
                    }
                }
            },
        )?;
        println!();
        Ok(())
    }
}

struct BenchTask<'a> {
    files: &'a ModelFiles,
    prompt_len: usize,
    decode_tokens: usize,
    batch: usize,
    repeats: usize,
    warmup: usize,
    /// Sampled after each of ddp's timed runs.
    llama: Option<&'a mut ddp::bench::llama_cpp::LlamaBench>,
}

impl BackendTask for BenchTask<'_> {
    type Output = ddp::bench::Throughput;
    fn run<B: Backend>(self, device: B::Device) -> ddp::Result<Self::Output> {
        let bar = load_bar(self.files);
        let model = load::load_model::<B>(
            &self.files.config,
            self.files.weights.as_ref(),
            &device,
            Some(&bar),
        )?;
        bar.finish_and_clear();
        let (mut runs, mut failed) = (0, None);
        let mut llama = self.llama;
        let t = ddp::bench::throughput(
            &model,
            self.batch,
            self.prompt_len,
            self.decode_tokens,
            self.warmup,
            self.repeats,
            || {
                runs += 1;
                if let (Some(l), true, None) = (llama.as_mut(), runs > self.warmup, &failed) {
                    failed = l.sample().err();
                }
            },
        );
        failed.map_or(Ok(t), Err)
    }
}

/// Runs the PyTorch side on a HF directory (exporting a GGUF to a temporary one first).
fn torch_side(
    files: &ModelFiles,
    r: &ddp::bench::Throughput,
) -> Result<std::result::Result<(ddp::bench::Throughput, String), String>> {
    let (_tmp, dir) = ddp::bench::torch::hf_dir(files)?;
    Ok(ddp::bench::torch::throughput(
        &dir,
        r.batch,
        r.prompt_len,
        r.decode_tokens,
        1,
        r.repeats,
    )?)
}

fn inspect(files: &ModelFiles, spec: &str, json: bool) -> Result<()> {
    let c = &files.config;
    let p = accounting::count(c);
    let summary = serde_json::json!({
        "source": spec,
        "path": files.path,
        "format": files.format,
        "dtype": files.weights.dtype_summary(),
        "architecture": c.arch,
        "layers": c.num_hidden_layers,
        "hidden_size": c.hidden_size,
        "heads": c.num_attention_heads,
        "kv_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "ffn_size": c.intermediate_size,
        "experts": c.moe.as_ref().map(|m| m.num_experts),
        "experts_per_token": c.moe.as_ref().map(|m| m.num_experts_per_tok),
        "vocab_size": c.vocab_size,
        "tied_embeddings": c.tie_word_embeddings,
        "parameters": {
            "total": p.total, "embedding": p.embedding, "prunable": p.prunable(),
            "attention": p.attention, "ffn": p.ffn, "routed_experts": p.experts,
            "other": p.other,
        },
        "config": c,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    let n = |x: usize| {
        let s = x.to_string();
        let mut out = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(ch);
        }
        out
    };
    println!("model         {spec}");
    println!(
        "file          {} ({}, {})",
        files.path.display(),
        files.format,
        files.weights.dtype_summary()
    );
    println!("architecture  {:?}", c.arch);
    println!("layers        {}", c.num_hidden_layers);
    println!("hidden        {}", c.hidden_size);
    println!(
        "heads         {} query / {} KV (head_dim {})",
        c.num_attention_heads, c.num_key_value_heads, c.head_dim
    );
    println!("ffn           {}", c.intermediate_size);
    if let Some(m) = &c.moe {
        println!(
            "experts       {} ({} per token, width {}){}",
            m.num_experts,
            m.num_experts_per_tok,
            m.moe_intermediate_size,
            m.shared_expert_intermediate_size
                .map_or(String::new(), |s| format!(" + shared expert of width {s}"))
        );
    }
    println!(
        "vocab         {}{}",
        c.vocab_size,
        if c.tie_word_embeddings {
            " (tied embeddings)"
        } else {
            ""
        }
    );
    println!("parameters    {} total", n(p.total));
    println!("              {} embedding", n(p.embedding));
    println!(
        "              {} prunable ({} attention, {} FFN{})",
        n(p.prunable()),
        n(p.attention),
        n(p.ffn),
        if p.experts > 0 {
            format!(", of which {} in routed experts", n(p.experts))
        } else {
            String::new()
        }
    );
    println!("              {} other (norms, routers)", n(p.other));
    Ok(())
}

/// Exit code 2: the recipe is invalid (nothing ran).
#[derive(Debug)]
struct Invalid(String);
impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Invalid {}

/// `ddp-run RECIPE.toml [flags]` means `ddp-run run RECIPE.toml [flags]`.
fn with_default_command(mut args: Vec<String>) -> Vec<String> {
    const SUBS: &[&str] = &[
        "run", "plan", "status", "explain", "cache", "gc", "compare", "inspect", "generate",
        "bench", "convert", "help",
    ];
    let mut i = 1;
    while i < args.len() {
        let a = args[i].as_str();
        if SUBS.contains(&a) {
            return args;
        }
        if a == "--cache" || a == "--device" {
            i += 2;
            continue;
        }
        if !a.starts_with('-') {
            if a.ends_with(".toml") {
                args.insert(i, "run".into());
            }
            return args;
        }
        i += 1;
    }
    args
}

fn main() -> ExitCode {
    // The CPU matmul splits GEMMs into row blocks on rayon's threads; matrixmultiply's own pool
    // would compete with them for the same cores (compare `MATMUL_NUM_THREADS=2 ddp-run bench`).
    // Set before any thread starts; a user's value wins.
    if std::env::var_os("MATMUL_NUM_THREADS").is_none() {
        std::env::set_var("MATMUL_NUM_THREADS", "1");
    }
    keep_freed_memory();
    let cli = Cli::parse_from(with_default_command(std::env::args().collect()));
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<Invalid>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn load_recipe(path: &std::path::Path) -> Result<ddp::recipe::Recipe> {
    ddp::recipe::load(path, &stages::registry())
        .map_err(|e| anyhow::Error::new(Invalid(format!("invalid recipe\n{e}"))))
}

fn run_recipe(a: RunArgs, cache_dir: &std::path::Path, device: DeviceSpec) -> Result<ExitCode> {
    let recipe = load_recipe(&a.recipe)?;
    let cache = Cache::open(cache_dir)?;
    let opts = engine::Options {
        force: a.force,
        only: a.only,
        until: a.until,
        keep_going: a.keep_going,
        jobs: a.jobs,
        dry_run: a.dry_run,
        copy_out: a.copy_out,
        out_root: Some(a.out),
        device: device.to_string(),
    };
    let summary = engine::run(&recipe, &stages::registry(), &cache, &opts)?;
    println!("| stage | key | result | seconds | headline |");
    println!("|---|---|---|---|---|");
    for d in &summary.results {
        let outcome = match &d.outcome {
            engine::Outcome::Cached => "cached".to_string(),
            engine::Outcome::Ran => "ran".to_string(),
            engine::Outcome::Reused => "reused (ran elsewhere)".to_string(),
            engine::Outcome::Failed(e) => format!("FAILED: {e}"),
            engine::Outcome::NotRun(w) => format!("not run: {w}"),
        };
        let head = d
            .headline
            .as_ref()
            .map_or(String::new(), |(k, v)| format!("{k} = {v}"));
        println!(
            "| {} | {} | {} | {:.1} | {} |",
            d.name,
            &d.key[..12],
            outcome,
            d.seconds,
            head
        );
    }
    let outs: Vec<_> = summary
        .results
        .iter()
        .filter_map(|d| d.out.as_ref())
        .collect();
    if let Some(first) = outs.first() {
        println!("\nresults: {}", first.parent().unwrap_or(first).display());
    }
    if !a.dry_run {
        println!(
            "lock file: {}",
            engine::lockfile::path_for(&recipe.path).display()
        );
    }
    Ok(if summary.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn age_days(unix: u64) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    now.saturating_sub(unix) as f64 / 86400.0
}

fn gc(
    cache: &Cache,
    recipes: &[PathBuf],
    older: Option<f64>,
    max_gb: Option<f64>,
    dry: bool,
) -> Result<()> {
    let entries = cache.entries();
    let mut keep: std::collections::BTreeSet<String> = Default::default();
    for r in recipes {
        let lock = engine::lockfile::LockFile::read(r).ok_or_else(|| {
            anyhow::anyhow!(
                "{} has no lock file ({}): run it first",
                r.display(),
                engine::lockfile::path_for(r).display()
            )
        })?;
        keep.extend(lock.stages.values().map(|s| s.key.clone()));
    }
    let mut doomed: Vec<&engine::cache::Manifest> = vec![];
    for m in &entries {
        let unreferenced = !recipes.is_empty() && !keep.contains(&m.key);
        let old = older.is_some_and(|d| age_days(m.started_unix) > d);
        if unreferenced || old {
            doomed.push(m);
        }
    }
    if let Some(gb) = max_gb {
        let budget = (gb * 1e9) as u64;
        let mut sized: Vec<(&engine::cache::Manifest, u64)> = entries
            .iter()
            .map(|m| (m, Cache::size_of(&cache.entry_dir(&m.kind, &m.key))))
            .collect();
        sized.sort_by_key(|(m, _)| m.started_unix);
        let mut total: u64 = sized
            .iter()
            .filter(|(m, _)| !doomed.iter().any(|d| d.key == m.key))
            .map(|x| x.1)
            .sum();
        for (m, size) in sized {
            if total <= budget {
                break;
            }
            if !doomed.iter().any(|d| d.key == m.key) {
                doomed.push(m);
                total -= size;
            }
        }
    }
    let mut freed = 0;
    for m in &doomed {
        let dir = cache.entry_dir(&m.kind, &m.key);
        let size = Cache::size_of(&dir);
        freed += size;
        println!(
            "{} {}/{} ({}, {:.1} MB)",
            if dry { "would remove" } else { "removed" },
            m.kind,
            &m.key[..12],
            m.instance,
            size as f64 / 1e6
        );
        if !dry {
            cache.discard(&m.kind, &m.key)?;
        }
    }
    println!(
        "{} {:.1} MB in {} entries",
        if dry { "would free" } else { "freed" },
        freed as f64 / 1e6,
        doomed.len()
    );
    Ok(())
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    let device: DeviceSpec = cli.device.parse()?;
    match cli.cmd {
        Cmd::Run(a) => run_recipe(a, &cli.cache, device),
        Cmd::Plan { recipe, force } => {
            let recipe = load_recipe(&recipe)?;
            let cache = Cache::open(&cli.cache)?;
            let opts = engine::Options {
                force,
                ..Default::default()
            };
            let plan = engine::plan(&recipe, &stages::registry(), &cache, &opts)?;
            println!("recipe {} ({} stage instances)", recipe.name, plan.len());
            for p in &plan {
                let status = match &p.status {
                    engine::Status::Cached => "CACHED".to_string(),
                    engine::Status::Run(r) => format!("RUN     ({r})"),
                    engine::Status::Skipped => "SKIP".to_string(),
                };
                let ins: Vec<&str> = p.instance.inputs.values().map(String::as_str).collect();
                println!(
                    "  {:<48} {} {:<8} {}",
                    p.instance.name,
                    &p.key[..12],
                    p.instance.kind,
                    status
                );
                if !ins.is_empty() {
                    println!("  {:<48}   <- {}", "", ins.join(", "));
                }
            }
            cache.memo.save();
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { recipe } => {
            let recipe = load_recipe(&recipe)?;
            let cache = Cache::open(&cli.cache)?;
            let plan = engine::plan(&recipe, &stages::registry(), &cache, &Default::default())?;
            let reg = stages::registry();
            let (mut done, mut missing) = (0, 0);
            for p in &plan {
                let head = cache
                    .manifest(&p.instance.kind, &p.key)
                    .and_then(|m| {
                        reg.get(&p.instance.kind)
                            .and_then(|k| k.headline())
                            .and_then(|h| m.metrics.get(h).map(|v| format!("{h} = {v}")))
                    })
                    .unwrap_or_default();
                let st = if p.status == engine::Status::Cached {
                    done += 1;
                    "done   "
                } else {
                    missing += 1;
                    "missing"
                };
                println!("{st} {:<48} {head}", p.instance.name);
            }
            println!("{done} done, {missing} missing");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Explain { kind } => {
            let reg = stages::registry();
            let Some(kind) = kind else {
                for n in reg.names() {
                    println!("{n:<14} {}", reg.get(n).unwrap().about());
                }

                return Ok(ExitCode::SUCCESS);
            };
            let k = reg
                .get(&kind)
                .ok_or_else(|| anyhow::anyhow!(reg.unknown_kind_message(&kind)))?;
            println!("{} (version {})\n{}\n", k.name(), k.version(), k.about());
            println!("parameters:");
            for p in k.params() {
                let d = p
                    .default
                    .as_ref()
                    .map_or("required".to_string(), |d| format!("default {d}"));
                println!(
                    "  {:<20} {} ({d})\n  {:<20} {}",
                    p.name,
                    p.ty.describe(),
                    "",
                    p.doc
                );
            }
            let ins = k.inputs();
            if !ins.is_empty() {
                println!("inputs:");
                for i in ins {
                    println!("  {:<20} from {} — {}", i.name, i.kinds.join(" or "), i.doc);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cache { cmd } => {
            let cache = Cache::open(&cli.cache)?;
            match cmd {
                CacheCmd::Ls => {
                    for m in cache.entries() {
                        let size = Cache::size_of(&cache.entry_dir(&m.kind, &m.key));
                        println!(
                            "{:<14} {} {:<48} {:>10.1} MB {:>6.1} days",
                            m.kind,
                            &m.key[..12],
                            m.instance,
                            size as f64 / 1e6,
                            age_days(m.started_unix)
                        );
                    }
                }
                CacheCmd::Du => {
                    let mut per: std::collections::BTreeMap<String, (usize, u64)> =
                        Default::default();
                    for m in cache.entries() {
                        let e = per.entry(m.kind.clone()).or_default();
                        e.0 += 1;
                        e.1 += Cache::size_of(&cache.entry_dir(&m.kind, &m.key));
                    }
                    let dl = Cache::size_of(&cache.root.join("downloads"));
                    for (k, (n, b)) in &per {
                        println!("{k:<14} {n:>5} entries {:>10.1} MB", *b as f64 / 1e6);
                    }
                    println!(
                        "{:<14} {:>5}         {:>10.1} MB",
                        "downloads",
                        "",
                        dl as f64 / 1e6
                    );
                }
                CacheCmd::Verify { fix } => {
                    let mut bad = 0;
                    let entries = cache.entries();
                    for m in &entries {
                        if let Some(what) = cache.check(m)? {
                            bad += 1;
                            println!(
                                "DAMAGED {}/{} ({}): {what}",
                                m.kind,
                                &m.key[..12],
                                m.instance
                            );
                            if fix {
                                cache.discard(&m.kind, &m.key)?;
                                println!("        removed");
                            }
                        }
                    }
                    cache.memo.save();
                    println!("{} entries, {bad} damaged", entries.len());
                    if bad > 0 && !fix {
                        return Ok(ExitCode::from(1));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Gc {
            recipes,
            older_than_days,
            max_size_gb,
            dry_run,
        } => {
            if recipes.is_empty() && older_than_days.is_none() && max_size_gb.is_none() {
                anyhow::bail!("say what to remove: recipes whose lock files to keep, --older-than-days or --max-size-gb");
            }
            gc(
                &Cache::open(&cli.cache)?,
                &recipes,
                older_than_days,
                max_size_gb,
                dry_run,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Compare {
            recipe,
            stage,
            baseline,
            out,
        } => {
            let recipe = load_recipe(&recipe)?;
            let lock = engine::lockfile::LockFile::read(&recipe.path).ok_or_else(|| {
                anyhow::anyhow!(
                    "{} has no lock file: run the recipe first",
                    recipe.path.display()
                )
            })?;
            let c = ddp::report::compare(&recipe, &lock, stage.as_deref(), baseline.as_deref())
                .map_err(|e| anyhow::anyhow!(e))?;
            print!("{}", c.markdown());
            let dir = out.join(&recipe.name);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("compare.md"), c.markdown())?;
            std::fs::write(dir.join("compare.csv"), c.csv())?;
            std::fs::write(
                dir.join("compare.json"),
                serde_json::to_string_pretty(&c.json)?,
            )?;
            println!("\nwritten: {}/compare.{{md,csv,json}}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Inspect { model, json } => {
            inspect(&open(&model, &cli.cache)?, &model, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Generate {
            model,
            prompt,
            max_new_tokens,
            temperature,
            top_p,
            seed,
        } => {
            let files = open(&model, &cli.cache)?;
            run_on(
                device,
                GenerateTask {
                    files: &files,
                    prompt: &prompt,
                    max_new: max_new_tokens,
                    sampling: generate::Sampling {
                        temperature,
                        top_p,
                        seed,
                    },
                },
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Convert { model, out } => {
            let files = open(&model, &cli.cache)?;
            let tensors = io::export::read_all(files.weights.as_ref())?;
            io::export::write_hf_dir(&out, &files.config, &tensors, files.tokenizer.as_ref())?;
            println!("wrote {} ({} tensors)", out.display(), tensors.len());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Eval {
            model,
            text,
            seq_len,
            stride,
            max_tokens,
            cloze_items,
            tasks,
            task_limit,
            json,
        } => {
            let files = open(&model, &cli.cache)?;
            let tok = files
                .tokenizer
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("{model} has no tokenizer"))?;
            let spec = stages::evaluate::SuiteSpec {
                data: text.as_deref(),
                seq_len,
                stride,
                max_tokens,
                cloze_items,
                cloze_choices: 4,
                min_words: 40,
                tasks,
                task_limit,
                max_len: 1024,
                seed: 0,
            };
            let suite = stages::evaluate::build_suite(&spec, tok, &cli.cache)?;
            let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                ProgressBar::new(0)
            } else {
                ProgressBar::hidden()
            };
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:>10} {pos}/{len} sequences [{bar:30}] {per_sec} eta {eta}",
                )
                .unwrap()
                .progress_chars("=> "),
            );
            let r = run_on(
                device,
                stages::evaluate::EvalTask {
                    files: &files,
                    suite: &suite,
                    bar: &bar,
                },
            )?;
            bar.finish_and_clear();
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("model {model}");
                if let Some(p) = &r.perplexity {
                    println!(
                        "perplexity {:.4}  (mean NLL {:.6}; {} tokens, {} windows of {} (stride {}), {} scored)",
                        p.perplexity, p.mean_nll, p.tokens, p.windows, p.window, p.stride, p.scored_tokens
                    );
                }
                print!("{}", r.markdown(None));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench {
            model,
            prompt_len,
            decode_tokens,
            batch,
            repeats,
            warmup,
            json,
            torch,
            llama_cpp,
            vs,
            prompt_lens,
            batches,
            train,
            teacher,
            seq_len,
            steps,
        } => {
            let files = open(&model, &cli.cache)?;
            if train {
                let p = ddp::bench::train::TrainProtocol {
                    seq_len,
                    batch,
                    steps,
                    rounds: repeats.max(1),
                    warmup,
                    teacher,
                    topk: 64,
                };
                let bar = rounds_bar("rounds");
                let r = ddp::bench::train::run(device, &files, &p, torch, &bar)?;
                bar.finish_and_clear();
                println!("model    {model}");
                print!("{}", ddp::bench::train::markdown(&p, &r.build, &r.engines));
                if let Some(why) = &r.torch_skipped {
                    println!("\nPyTorch comparison skipped: {why}");
                }
                if let Some(path) = json {
                    std::fs::write(&path, serde_json::to_string_pretty(&r)?)
                        .with_context(|| format!("writing {}", path.display()))?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            if let Some(other) = vs {
                let other_files = open(&other, &cli.cache)?;
                let protocol = ddp::bench::Protocol {
                    prompt_lens: if prompt_lens.is_empty() {
                        vec![prompt_len]
                    } else {
                        prompt_lens
                    },
                    batches: if batches.is_empty() {
                        vec![batch]
                    } else {
                        batches
                    },
                    decode_tokens,
                    warmup,
                    repeats,
                };
                let bar = rounds_bar("runs");
                let dev = device.to_string();
                let c = run_on(
                    device,
                    stages::benchmark::BenchTask {
                        models: vec![(model.as_str(), &files), (other.as_str(), &other_files)],
                        protocol: &protocol,
                        device: &dev,
                        bar: &bar,
                    },
                )?;
                bar.finish_and_clear();
                print!("{}", c.markdown());
                if let Some(path) = json {
                    std::fs::write(&path, serde_json::to_string_pretty(&c)?)?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            let mut llama = llama_cpp
                .map(|dir| {
                    ddp::bench::llama_cpp::LlamaBench::new(
                        &dir,
                        &files,
                        batch,
                        prompt_len,
                        decode_tokens,
                    )
                })
                .transpose()?;
            let r = run_on(
                device,
                BenchTask {
                    files: &files,
                    prompt_len,
                    decode_tokens,
                    batch,
                    repeats,
                    warmup,
                    llama: llama.as_mut(),
                },
            )?;
            let reference = if torch {
                Some(torch_side(&files, &r)?)
            } else {
                None
            };
            println!("model    {model}");
            println!(
                "protocol prefill {} tokens, then decode {} tokens with the KV cache; batch {}; {} runs after {} warm-up",
                r.prompt_len, r.decode_tokens, r.batch, r.repeats, warmup
            );
            println!();
            println!(
                "| engine | prefill tok/s (median [min, max]) | decode tok/s (median [min, max]) |"
            );
            println!("|---|---|---|");
            let row = |name: &str, t: &ddp::bench::Throughput| {
                println!(
                    "| {name} | {:.1} [{:.1}, {:.1}] | {:.1} [{:.1}, {:.1}] |",
                    t.prefill_tok_s.median,
                    t.prefill_tok_s.min,
                    t.prefill_tok_s.max,
                    t.decode_tok_s.median,
                    t.decode_tok_s.min,
                    t.decode_tok_s.max
                )
            };
            row(
                &format!("ddp {device} ({})", ddp::backend::build_info()),
                &r,
            );
            let llama = llama
                .as_ref()
                .and_then(|l| Some((l.throughput()?, l.label.clone())));
            let mut peers = Vec::new();
            if let Some(Ok((t, what))) = &reference {
                peers.push(("torch", what.as_str(), t));
            }
            if let Some((t, what)) = &llama {
                peers.push(("llama.cpp", what.as_str(), t));
            }
            for (_, what, t) in &peers {
                row(what, t);
            }
            for (name, _, t) in &peers {
                println!();
                for line in ddp::bench::ratio_lines(&r, name, t) {
                    println!("{line}");
                }
            }
            if let Some(Err(why)) = &reference {
                println!("\nPyTorch comparison skipped: {why}");
            }
            if let Some(path) = json {
                let v = serde_json::json!({
                    "ddp": r,
                    "torch": reference.as_ref().and_then(|x| x.as_ref().ok()).map(|x| &x.0),
                    "llama_cpp": llama.as_ref().map(|x| &x.0),
                });
                std::fs::write(&path, serde_json::to_string_pretty(&v)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
