//! Exposing results under `out/<recipe>/<instance>/`: concurrent `--copy-out` runs into one out
//! directory all succeed with one complete copy each, leftovers of killed exposers go, and a
//! link and a copy replace each other.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use ddp::engine::cache::Cache;
use ddp::engine::params::{int_in, StageParams};
use ddp::engine::registry::Registry;
use ddp::engine::stage::{Metrics, ParamSpec, ParamType, StageContext, StageKind};
use ddp::engine::{self, Options};

/// `files`: writes `count` files `f/NNN.txt`, each holding `value` and its number.
struct Files;

ddp::stage_params! {
    /// The `files` kind's parameters.
    struct FilesParams {
        /// text in every file
        value: String = "v" => ParamType::Str,
        /// how many files
        count: i64 = 40 => int_in(1, 1000),
    }
}

impl StageKind for Files {
    fn name(&self) -> &'static str {
        "files"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "test stage writing many files"
    }
    fn params(&self) -> Vec<ParamSpec> {
        FilesParams::specs()
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<Metrics> {
        let p: FilesParams = ctx.typed()?;
        fs::create_dir_all(ctx.out_dir.join("f"))?;
        for i in 0..p.count {
            fs::write(
                ctx.out_dir.join(format!("f/{i:03}.txt")),
                content(&p.value, i),
            )?;
        }
        Ok(Metrics::new())
    }
}

fn content(value: &str, i: i64) -> String {
    format!("{value} {i}\n").repeat(200)
}

fn registry() -> Registry {
    let mut r = ddp::stages::registry();
    r.register(Arc::new(Files));
    r
}

const VALUES: [&str; 3] = ["x", "y", "z"];

const RECIPE: &str = r#"
name = "many"
[stages.a]
kind = "files"
[sweep]
value = ["x", "y", "z"]
"#;

fn opts(out: &Path, copy_out: bool) -> Options {
    Options {
        out_root: Some(out.to_path_buf()),
        copy_out,
        ..Default::default()
    }
}

/// Runs the recipe in-process.
fn run(recipe: &Path, cache: &Path, out: &Path, copy_out: bool) -> engine::Summary {
    let rec = ddp::recipe::load(recipe, &registry()).unwrap_or_else(|e| panic!("{e}"));
    let cache = Cache::open(cache).unwrap();
    engine::run(&rec, &registry(), &cache, &opts(out, copy_out))
        .unwrap_or_else(|e| panic!("{}", e.chain()))
}

/// Every instance's result at `out/many/a@value=V` is a complete copy (or link) of its entry,
/// and nothing else is in the out directory (but the exposers' lock file).
fn assert_complete(out: &Path, copy: bool) {
    let dir = out.join("many");
    for v in VALUES {
        let d = dir.join(format!("a@value={v}"));
        assert_eq!(d.is_symlink(), !copy, "{}", d.display());
        for i in 0..40 {
            let f = d.join(format!("f/{i:03}.txt"));
            assert_eq!(
                fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display())),
                content(v, i)
            );
        }
    }
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".expose.lock")
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["a@value=x", "a@value=y", "a@value=z"],
        "leftovers in {}",
        dir.display()
    );
}

/// Exposes the recipe `DDP_TEST_EXPOSE_ROUNDS` times (entries cached: only the exposing runs).
#[test]
#[ignore = "entered by the process tests only"]
fn child_runner() {
    let (Some(recipe), Some(cache), Some(out), Some(rounds)) = (
        std::env::var_os("DDP_TEST_EXPOSE_RECIPE"),
        std::env::var_os("DDP_TEST_EXPOSE_CACHE"),
        std::env::var_os("DDP_TEST_EXPOSE_OUT"),
        std::env::var("DDP_TEST_EXPOSE_ROUNDS").ok(),
    ) else {
        return;
    };
    for _ in 0..rounds.parse::<usize>().unwrap() {
        let s = run(recipe.as_ref(), cache.as_ref(), out.as_ref(), true);
        assert!(!s.failed(), "{:?}", s.results);
    }
}

fn spawn_child(recipe: &Path, cache: &Path, out: &Path, rounds: usize) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "exposure::child_runner",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DDP_TEST_EXPOSE_RECIPE", recipe)
        .env("DDP_TEST_EXPOSE_CACHE", cache)
        .env("DDP_TEST_EXPOSE_OUT", out)
        .env("DDP_TEST_EXPOSE_ROUNDS", rounds.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

struct Env {
    _dir: tempfile::TempDir,
    recipe: PathBuf,
    cache: PathBuf,
    out: PathBuf,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("many.toml");
    fs::write(&recipe, RECIPE).unwrap();
    Env {
        recipe,
        cache: dir.path().join("cache"),
        out: dir.path().join("out"),
        _dir: dir,
    }
}

#[test]
fn concurrent_copy_out_runs_into_one_out_dir_all_succeed_with_complete_copies() {
    let e = env();
    assert!(!run(&e.recipe, &e.cache, &e.out, true).failed());
    // What killed exposers leave: a half-made copy and a replaced result being removed.
    let dir = e.out.join("many");
    fs::create_dir_all(dir.join(".a@value=x.tmp4194999/f")).unwrap();
    fs::create_dir_all(dir.join(".a@value=y.tmp77.old/f")).unwrap();
    // Four processes, each exposing the three results 15 times over the others' copies.
    let children: Vec<_> = (0..4)
        .map(|_| spawn_child(&e.recipe, &e.cache, &e.out, 15))
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a concurrent --copy-out run failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_complete(&e.out, true);
}

#[test]
fn a_copy_replaces_a_link_and_a_link_replaces_a_copy() {
    let e = env();
    for copy in [false, true, false, true] {
        let s = run(&e.recipe, &e.cache, &e.out, copy);
        assert!(!s.failed(), "copy_out = {copy}: {:?}", s.results);
        assert_complete(&e.out, copy);
    }
}
