//! Commands on recipes: run, plan, status, explain (a stage kind), compare (a sweep).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Result};

use super::{Failure, Global};
use ddp::engine::{self, cache::Cache, lockfile};
use ddp::recipe::Recipe;
use ddp::report::{Columns, CompareError, CompareOptions};
use ddp::stages;

/// `ddp-run run`.
#[derive(clap::Args, Clone)]
pub struct RunArgs {
    /// The recipe (TOML).
    recipe: PathBuf,
    /// Set a stage parameter as if the recipe wrote it: `--set anneal-train.steps=60`,
    /// `--set threshold.rule=topk`, `--set calibrate.data='["a.txt","b.txt"]'`; also
    /// `model.NAME`, `data.NAME`, `vars.NAME` for the recipe's variables. VALUE is read as
    /// TOML (a bare word is a string). Repeatable; recorded in the lock file.
    #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
    set: Vec<String>,
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

/// `ddp-run plan`.
#[derive(clap::Args)]
pub struct PlanArgs {
    recipe: PathBuf,
    /// Set a stage parameter as `run --set` does (the plan's keys change accordingly).
    #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
    set: Vec<String>,
    #[arg(long)]
    force: Vec<String>,
}

/// `ddp-run status`.
#[derive(clap::Args)]
pub struct StatusArgs {
    recipe: PathBuf,
    /// Set a stage parameter as `run --set` does.
    #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
    set: Vec<String>,
}

/// `ddp-run explain`.
#[derive(clap::Args)]
pub struct ExplainArgs {
    /// A stage kind; omit to list them.
    kind: Option<String>,
}

/// `ddp-run compare`.
#[derive(clap::Args)]
pub struct CompareArgs {
    recipe: PathBuf,
    /// Only instances of this stage.
    #[arg(long)]
    stage: Option<String>,
    /// Show deltas against this instance (or row).
    #[arg(long)]
    baseline: Option<String>,
    /// Every metric, one row per instance (default: the swept values, perplexity and its delta,
    /// accuracies, parameters kept, speed-ups beside the ideal; one row per measured model).
    #[arg(long, conflicts_with = "columns")]
    all: bool,
    /// These columns, in this order (axis and metric names as `--all` shows them).
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    columns: Vec<String>,
    #[arg(long, default_value = "out")]
    out: PathBuf,
}

fn load_recipe(path: &Path, overrides: &[String]) -> Result<Recipe> {
    ddp::recipe::load_with(path, &stages::registry(), overrides)
        .map_err(|e| anyhow::Error::new(Failure::InvalidRecipe(e.to_string())))
}

fn outcome(o: &engine::Outcome) -> String {
    match o {
        engine::Outcome::Cached => "cached".to_string(),
        engine::Outcome::Ran => "ran".to_string(),
        engine::Outcome::Reused => "reused (ran elsewhere)".to_string(),
        engine::Outcome::Failed(e) => format!("FAILED: {e}"),
        engine::Outcome::NotRun(w) => format!("not run: {w}"),
    }
}

/// `overrides: --set A --set B`, when the command line gave any.
fn overrides_line(recipe: &Recipe) -> Option<String> {
    let sets: Vec<String> = recipe
        .overrides
        .iter()
        .map(|o| format!("--set {o}"))
        .collect();
    (!sets.is_empty()).then(|| format!("overrides: {}", sets.join(" ")))
}

/// Runs what is not cached; prints one row per instance, where the results are, the lock file.
pub fn run(a: RunArgs, g: &Global) -> Result<ExitCode> {
    let recipe = load_recipe(&a.recipe, &a.set)?;
    let cache = Cache::open(&g.cache)?;
    let opts = engine::Options {
        force: a.force,
        only: a.only,
        until: a.until,
        keep_going: a.keep_going,
        jobs: a.jobs,
        dry_run: a.dry_run,
        copy_out: a.copy_out,
        out_root: Some(a.out),
    };
    let obs = super::progress::Stages::new();
    let registry = stages::registry_on(g.device);
    let summary = engine::run_observed(&recipe, &registry, &cache, &opts, &obs)?;
    drop(obs);
    if let Some(line) = overrides_line(&recipe) {
        println!("{line}\n");
    }
    println!("| stage | key | result | seconds | headline |");
    println!("|---|---|---|---|---|");
    for d in &summary.results {
        let head = d
            .headline
            .as_ref()
            .map_or(String::new(), |(k, v)| format!("{k} = {v}"));
        let (name, key, o, s) = (&d.name, &d.key[..12], outcome(&d.outcome), d.seconds);
        println!("| {name} | {key} | {o} | {s:.1} | {head} |");
    }
    if let Some(first) = summary.results.iter().find_map(|d| d.out.as_ref()) {
        println!("\nresults: {}", first.parent().unwrap_or(first).display());
    }
    if !a.dry_run {
        println!("lock file: {}", lockfile::path_for(&recipe.path).display());
    }
    Ok(if summary.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints every instance with its key, kind, CACHED/RUN (and why) and its inputs.
pub fn plan(a: PlanArgs, g: &Global) -> Result<ExitCode> {
    let recipe = load_recipe(&a.recipe, &a.set)?;
    let cache = Cache::open(&g.cache)?;
    let opts = engine::Options {
        force: a.force,
        ..Default::default()
    };
    let plan = engine::plan(&recipe, &stages::registry(), &cache, &opts)?;
    println!("recipe {} ({} stage instances)", recipe.name, plan.len());
    if let Some(line) = overrides_line(&recipe) {
        println!("{line}");
    }
    for p in &plan {
        let status = match &p.status {
            engine::Status::Cached => "CACHED".to_string(),
            engine::Status::Run(r) => format!("RUN     ({r})"),
            engine::Status::Skipped => "SKIP".to_string(),
        };
        let (name, key, kind) = (&p.instance.name, &p.key[..12], &p.instance.kind);
        println!("  {name:<48} {key} {kind:<8} {status}");
        let ins: Vec<&str> = p.instance.inputs.values().map(String::as_str).collect();
        if !ins.is_empty() {
            println!("  {:<48}   <- {}", "", ins.join(", "));
        }
    }
    cache.memo.save();
    Ok(ExitCode::SUCCESS)
}

/// Prints done/missing per instance with its headline metric.
pub fn status(a: StatusArgs, g: &Global) -> Result<ExitCode> {
    let recipe = load_recipe(&a.recipe, &a.set)?;
    let cache = Cache::open(&g.cache)?;
    let reg = stages::registry();
    let plan = engine::plan(&recipe, &reg, &cache, &Default::default())?;
    let (mut done, mut missing) = (0, 0);
    for p in &plan {
        let head = cache
            .manifest(&p.instance.kind, &p.key)
            .and_then(|m| {
                let h = reg.get(&p.instance.kind)?.headline()?;
                m.metrics.get(h).map(|v| format!("{h} = {v}"))
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

/// Lists the stage kinds, or one kind's parameters and inputs.
pub fn explain(a: ExplainArgs) -> Result<ExitCode> {
    let reg = stages::registry();
    let Some(kind) = a.kind else {
        for n in reg.names() {
            if let Some(k) = reg.get(n) {
                println!("{n:<14} {}", k.about());
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    let k = reg
        .get(&kind)
        .ok_or_else(|| anyhow!(reg.unknown_kind_message(&kind)))?;
    println!("{} (version {})\n{}\n", k.name(), k.version(), k.about());
    println!("parameters:");
    for p in k.params() {
        let d = p
            .default
            .as_ref()
            .map_or("required".to_string(), |d| format!("default {d}"));
        let (name, ty, doc) = (p.name, p.ty.describe(), p.doc);
        println!("  {name:<20} {ty} ({d})\n  {:<20} {doc}", "");
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

/// The sweep table: printed, and written as Markdown and CSV (the columns shown) and JSON
/// (every metric) under `OUT/<recipe>/`.
pub fn compare(a: CompareArgs) -> Result<ExitCode> {
    let recipe = load_recipe(&a.recipe, &[])?;
    let lock = lockfile::LockFile::read(&recipe.path).ok_or_else(|| {
        anyhow!(
            "{} has no lock file: run the recipe first",
            recipe.path.display()
        )
    })?;
    let reg = stages::registry();
    let kind_headlines = reg
        .names()
        .into_iter()
        .filter_map(|n| Some((n.to_string(), reg.get(n)?.headline()?.to_string())))
        .collect();
    let columns = match (a.all, a.columns.is_empty()) {
        (true, _) => Columns::All,
        (false, true) => Columns::Headline,
        (false, false) => Columns::Chosen(a.columns),
    };
    let opts = CompareOptions {
        stage: a.stage,
        baseline: a.baseline,
        columns,
        kind_headlines,
    };
    let c = ddp::report::compare(&recipe, &lock, &opts).map_err(|e| match e {
        CompareError::UnknownColumns(m) => anyhow::Error::new(Failure::Usage(m)),
        e => e.into(),
    })?;
    print!("{}", c.markdown());
    let dir = a.out.join(&recipe.name);
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
