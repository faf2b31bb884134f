//! The pipeline engine with test-only stage kinds (a double of the contract, not of the
//! product): sharing across sweeps, no-op reruns, precise invalidation, kill safety and resume,
//! concurrency, tamper detection, and recipe validation.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ddp::engine::cache::Cache;
use ddp::engine::{self, Options, Outcome, Reason, Status};
use toml::Value;

use crate::common::kinds::{registry, Env};

const SWEEP: &str = r#"
name = "sweep"
[stages.prefix]
kind = "text"
value = "p"
log = "LOG"
[stages.mid]
kind = "text"
after = ["prefix"]
log = "LOG"
[stages.tail]
kind = "text"
after = ["mid"]
log = "LOG"
value = "t"
[sweep]
value = { values = ["x", "y", "z"], stages = ["mid"] }
"#;

#[test]
fn a_sweep_runs_the_shared_prefix_once() {
    let env = Env::new();
    let r = env.recipe("sweep.toml", SWEEP);
    let s = env.run(&r);
    assert!(!s.failed());
    assert_eq!(env.executions("prefix"), 1);
    for v in ["x", "y", "z"] {
        assert_eq!(env.executions(&format!("mid@value={v}")), 1);
        assert_eq!(env.executions(&format!("tail@value={v}")), 1);
        let out =
            fs::read_to_string(env.root.join(format!("out/sweep/tail@value={v}/out.txt"))).unwrap();
        assert_eq!(out, format!("p[1]{v}[1]t[1]"));
    }
    assert_eq!(s.results.len(), 7);
    assert_eq!(s.executed(), 7);
}

#[test]
fn a_second_run_executes_nothing_and_is_fast() {
    let env = Env::new();
    let r = env.recipe("sweep.toml", SWEEP);
    env.run(&r);
    let t = Instant::now();
    let s = env.run(&r);
    let took = t.elapsed();
    assert_eq!(s.executed(), 0);
    assert!(s.results.iter().all(|d| d.outcome == Outcome::Cached));
    assert!(took < Duration::from_secs(1), "no-op rerun took {took:?}");
    assert_eq!(env.log_lines().len(), 7, "nothing ran again");
}

#[test]
fn changing_one_parameter_reruns_exactly_the_affected_stages() {
    let env = Env::new();
    let r = env.recipe("sweep.toml", SWEEP);
    env.run(&r);
    // Change the tail's value: only the three tail instances rerun.
    env.recipe(
        "sweep.toml",
        &SWEEP.replace("value = \"t\"", "value = \"T\""),
    );
    let plan = env.plan(&r);
    for (name, st) in &plan {
        if name.starts_with("tail@") {
            assert_eq!(
                st,
                &Status::Run(Reason::ParamsChanged(vec!["value".into()])),
                "{name}"
            );
        } else {
            assert_eq!(st, &Status::Cached, "{name}");
        }
    }
    env.run(&r);
    // Change the shared prefix: everything reruns, downstream because its input changed.
    env.recipe(
        "sweep.toml",
        &SWEEP
            .replace("value = \"t\"", "value = \"T\"")
            .replace("value = \"p\"", "value = \"P\""),
    );
    let plan = env.plan(&r);
    assert_eq!(
        plan["prefix"],
        Status::Run(Reason::ParamsChanged(vec!["value".into()]))
    );
    assert_eq!(
        plan["mid@value=y"],
        Status::Run(Reason::InputChanged("prefix".into()))
    );
    assert_eq!(
        plan["tail@value=z"],
        Status::Run(Reason::InputChanged("mid@value=z".into()))
    );
    // --force reruns a stage and its downstream only.
    env.run(&r);
    let opts = Options {
        force: vec!["mid@value=x".into()],
        ..env.opts()
    };
    let rec = ddp::recipe::load(&r, &registry()).unwrap();
    let forced: Vec<_> = engine::plan(&rec, &registry(), &env.cache(), &opts)
        .unwrap()
        .into_iter()
        .filter(|p| p.status == Status::Run(Reason::Forced))
        .map(|p| p.instance.name)
        .collect();
    assert_eq!(forced, vec!["mid@value=x", "tail@value=x"]);
}

#[test]
fn only_and_until_select_stages() {
    let env = Env::new();
    let r = env.recipe("sweep.toml", SWEEP);
    let rec = ddp::recipe::load(&r, &registry()).unwrap();
    let opts = Options {
        until: Some("mid".into()),
        ..env.opts()
    };
    let s = engine::run(&rec, &registry(), &env.cache(), &opts).unwrap();
    assert_eq!(s.executed(), 4);
    assert_eq!(env.executions("tail@value=x"), 0);
    let opts = Options {
        only: Some("tail@value=y".into()),
        ..env.opts()
    };
    let s = engine::run(&rec, &registry(), &env.cache(), &opts).unwrap();
    assert_eq!(s.executed(), 1);
    let bad = Options {
        only: Some("nope".into()),
        ..env.opts()
    };
    assert!(engine::run(&rec, &registry(), &env.cache(), &bad)
        .unwrap_err()
        .to_string()
        .contains("nope"));
}

#[test]
fn a_failure_stops_its_downstream_and_keep_going_runs_the_rest() {
    let env = Env::new();
    let body = SWEEP.replace("[sweep]", "[stages.bad]\nkind = \"text\"\nafter = [\"prefix\"]\nfail = true\n[stages.after-bad]\nkind = \"text\"\nafter = [\"bad\"]\n[sweep]");
    let r = env.recipe("f.toml", &body);
    let rec = ddp::recipe::load(&r, &registry()).unwrap();
    let opts = Options {
        keep_going: true,
        ..env.opts()
    };
    let s = engine::run(&rec, &registry(), &env.cache(), &opts).unwrap();
    assert!(s.failed());
    let by: BTreeMap<_, _> = s
        .results
        .iter()
        .map(|d| (d.name.as_str(), &d.outcome))
        .collect();
    assert!(matches!(by["bad"], Outcome::Failed(e) if e.contains("failing on purpose")));
    assert!(matches!(by["after-bad"], Outcome::NotRun(_)));
    assert_eq!(
        *by["tail@value=z"],
        Outcome::Ran,
        "independent branches still ran"
    );
    // No entry for the failed stage.
    let bad_key = &s.results.iter().find(|d| d.name == "bad").unwrap().key;
    assert!(env.cache().manifest("text", bad_key).is_none());
}

#[test]
fn a_declared_input_is_matched_by_kind() {
    let env = Env::new();
    let r = env.recipe("i.toml", "[stages.a]\nkind = \"text\"\nvalue = \"abc\"\n[stages.b]\nkind = \"needs-text\"\nafter = [\"a\"]\n");
    let s = env.run(&r);
    assert!(!s.failed(), "{:?}", s.results);
    assert_eq!(
        fs::read_to_string(env.root.join("out/i/b/out.txt")).unwrap(),
        "ABC[1]"
    );
}

#[test]
fn a_tampered_entry_is_detected_and_rerun() {
    let env = Env::new();
    let r = env.recipe("sweep.toml", SWEEP);
    let s = env.run(&r);
    let d = s.results.iter().find(|d| d.name == "mid@value=y").unwrap();
    let f = env.cache().entry_dir("text", &d.key).join("out.txt");
    fs::write(&f, "tampered").unwrap();
    let cache = env.cache();
    let m = cache.manifest("text", &d.key).unwrap();
    assert!(cache.check(&m).unwrap().unwrap().contains("out.txt"));
    let plan = env.plan(&r);
    assert!(
        matches!(&plan["mid@value=y"], Status::Run(Reason::Damaged(w)) if w.contains("out.txt"))
    );
    env.run(&r);
    assert_eq!(env.executions("mid@value=y"), 2);
    assert_eq!(fs::read_to_string(&f).unwrap(), "p[1]y[1]");
}

#[test]
fn bit_rot_with_the_mtime_kept_is_found_by_verify() {
    let env = Env::new();
    let r = env.recipe("sweep.toml", SWEEP);
    let s = env.run(&r);
    env.run(&r); // a no-op run: checks every entry, so the digest memo knows out.txt
    let d = s.results.iter().find(|d| d.name == "mid@value=y").unwrap();
    let f = env.cache().entry_dir("text", &d.key).join("out.txt");
    let mtime = fs::metadata(&f).unwrap().modified().unwrap();
    let mut bytes = fs::read(&f).unwrap();
    bytes[0] ^= 1;
    fs::write(&f, &bytes).unwrap();
    fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let cache = env.cache();
    let m = cache.manifest("text", &d.key).unwrap();
    // Runs trust the digest memo (same path, size, mtime, inode); verify re-hashes.
    let found = cache.verify(&m).unwrap();
    assert!(
        found.is_some_and(|w| w.contains("out.txt")),
        "bit rot not found"
    );
}

#[test]
fn an_entry_without_a_valid_manifest_is_damaged_not_invisible() {
    let env = Env::new();
    let r = env.recipe("sweep.toml", SWEEP);
    let s = env.run(&r);
    let key = |name: &str| {
        s.results
            .iter()
            .find(|d| d.name == name)
            .unwrap()
            .key
            .clone()
    };
    let (y, z) = (key("mid@value=y"), key("mid@value=z"));
    let cache = env.cache();
    fs::write(cache.entry_dir("text", &y).join("manifest.json"), "{").unwrap();
    // An entry copied under another key's place is not that key's result.
    let other = fs::read_to_string(
        cache
            .entry_dir("text", &key("prefix"))
            .join("manifest.json"),
    );
    fs::write(
        cache.entry_dir("text", &z).join("manifest.json"),
        other.unwrap(),
    )
    .unwrap();
    let plan = env.plan(&r);
    for inst in ["mid@value=y", "mid@value=z"] {
        assert!(
            matches!(&plan[inst], Status::Run(Reason::Damaged(w)) if w.contains("manifest")),
            "{inst}: {:?}",
            plan[inst]
        );
    }
    let damaged: Vec<String> = env
        .cache()
        .damaged()
        .into_iter()
        .map(|(_, k, _)| k)
        .collect();
    assert!(damaged.contains(&y) && damaged.contains(&z), "{damaged:?}");
    env.run(&r);
    assert_eq!(env.executions("mid@value=y"), 2);
    assert!(env.cache().damaged().is_empty());
}

// ---- processes: kill safety and concurrency -------------------------------------------------

/// Runs a recipe in a child process (this test binary, re-entered through `child_runner`).
fn spawn_child(recipe: &Path, cache: &Path, out: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "engine::child_runner",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DDP_TEST_CHILD_RECIPE", recipe)
        .env("DDP_TEST_CHILD_CACHE", cache)
        .env("DDP_TEST_CHILD_OUT", out)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
#[ignore = "entered by the process tests only"]
fn child_runner() {
    let (Some(recipe), Some(cache), Some(out)) = (
        std::env::var_os("DDP_TEST_CHILD_RECIPE"),
        std::env::var_os("DDP_TEST_CHILD_CACHE"),
        std::env::var_os("DDP_TEST_CHILD_OUT"),
    ) else {
        return;
    };
    let rec = ddp::recipe::load(Path::new(&recipe), &registry()).unwrap();
    let cache = Cache::open(Path::new(&cache)).unwrap();
    let opts = Options {
        out_root: Some(PathBuf::from(out)),
        ..Default::default()
    };
    let s = engine::run(&rec, &registry(), &cache, &opts).unwrap();
    assert!(!s.failed());
}

const SLOW: &str = r#"
name = "slow"
[stages.a]
kind = "text"
value = "a"
log = "LOG"
[stages.slow]
kind = "text"
after = ["a"]
value = "s"
steps = 40
sleep_ms = 50
log = "LOG"
"#;

#[test]
fn a_killed_run_leaves_no_complete_entry_and_resumes_to_the_same_result() {
    let env = Env::new();
    let r = env.recipe("slow.toml", SLOW);
    let cache_dir = env.root.join("cache");
    let mut child = spawn_child(&r, &cache_dir, &env.root.join("out"));
    // Wait until the slow stage has checkpointed a few steps, then SIGKILL.
    let tmp = cache_dir.join(".tmp");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let progressed = fs::read_dir(&tmp).into_iter().flatten().flatten().any(|e| {
            fs::read_to_string(e.path().join("checkpoint"))
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .is_some_and(|n| n >= 5)
        });
        if progressed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the child never reached the slow stage"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let rec = ddp::recipe::load(&r, &registry()).unwrap();
    let cache = env.cache();
    let plan = engine::plan(&rec, &registry(), &cache, &env.opts()).unwrap();
    let slow = plan.iter().find(|p| p.instance.name == "slow").unwrap();
    assert_eq!(
        slow.status,
        Status::Run(Reason::NoEntry),
        "a killed stage must not look complete"
    );
    assert!(!cache.entry_dir("text", &slow.key).exists());
    // Rerun: resumes from the checkpoint and produces the uninterrupted result.
    let s = engine::run(&rec, &registry(), &cache, &env.opts()).unwrap();
    assert!(!s.failed());
    let resumed_from: i64 = env
        .log_lines()
        .iter()
        .rfind(|l| l.starts_with("slow "))
        .unwrap()[5..]
        .parse()
        .unwrap();
    assert!(
        resumed_from >= 5,
        "the rerun resumed from step {resumed_from}"
    );
    let got = fs::read_to_string(env.root.join("out/slow/slow/out.txt")).unwrap();
    let clean = Env::new();
    let r2 = clean.recipe("slow.toml", &SLOW.replace("sleep_ms = 50", "sleep_ms = 0"));
    clean.run(&r2);
    assert_eq!(
        got,
        fs::read_to_string(clean.root.join("out/slow/slow/out.txt")).unwrap()
    );
    assert_eq!(got, "a[1]s[40]");
}

#[test]
fn two_concurrent_runs_share_one_cache_with_one_execution_per_key() {
    let env = Env::new();
    let r = env.recipe("c.toml", &SLOW.replace("steps = 40", "steps = 10"));
    let cache_dir = env.root.join("cache");
    let mut a = spawn_child(&r, &cache_dir, &env.root.join("out1"));
    let mut b = spawn_child(&r, &cache_dir, &env.root.join("out2"));
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    assert_eq!(env.executions("a"), 1, "{:?}", env.log_lines());
    assert_eq!(env.executions("slow"), 1, "{:?}", env.log_lines());
    for out in ["out1", "out2"] {
        assert_eq!(
            fs::read_to_string(env.root.join(out).join("slow/slow/out.txt")).unwrap(),
            "a[1]s[10]"
        );
    }
}

// ---- validation ------------------------------------------------------------------------------

/// Each malformed recipe gives an error that names the file and a line, and says what was
/// expected; none panics.
#[test]
fn malformed_recipes_name_the_location() {
    let good_head = "[stages.a]\nkind = \"text\"\n";
    let cases: Vec<(&str, String, &str)> = vec![
        ("toml syntax", "[stages.a\nkind = \"text\"".into(), "unclosed table"),
        ("unclosed string", "[stages.a]\nkind = \"text\n".into(), ""),
        ("unknown top-level key", "nmae = \"x\"\n[stages.a]\nkind = \"text\"".into(), "nmae"),
        ("stages not a table", "stages = 3".into(), "stages"),
        ("stage not a table", "[stages]\na = 3".into(), ""),
        ("no stages", "name = \"x\"".into(), "no stages"),
        ("missing kind", "[stages.a]\nvalue = \"x\"".into(), "no `kind`"),
        ("kind not a string", "[stages.a]\nkind = 3".into(), "kind"),
        ("unknown kind", "[stages.a]\nkind = \"txet\"".into(), "unknown stage kind `txet`"),
        ("unknown param", format!("{good_head}valeu = \"x\""), "unknown parameter `valeu`"),
        ("param wrong type", format!("{good_head}steps = \"many\""), "expected an integer"),
        ("int out of range", format!("{good_head}steps = 0"), "[1, 1000]"),
        ("float out of range", format!("{good_head}rate = 1.5"), "[0, 1]"),
        ("float given a string", format!("{good_head}rate = \"half\""), "expected a number"),
        ("bool given int", format!("{good_head}fail = 1"), "true or false"),
        ("choice not allowed", format!("{good_head}mode = \"c\""), "one of \"a\", \"b\""),
        ("after not a list", format!("{good_head}after = 3"), "`after` must be a list"),
        ("after unknown stage", format!("{good_head}after = [\"zz\"]"), "`zz`, which is not defined"),
        ("after itself", format!("{good_head}after = [\"a\"]"), "itself"),
        ("cycle", "[stages.a]\nkind = \"text\"\nafter = [\"b\"]\n[stages.b]\nkind = \"text\"\nafter = [\"a\"]".into(), "cycle"),
        ("missing declared input", "[stages.a]\nkind = \"needs-text\"".into(), "needs input `source`"),
        ("ambiguous input", "[stages.x]\nkind = \"text\"\n[stages.y]\nkind = \"text\"\n[stages.a]\nkind = \"needs-text\"\nafter = [\"x\", \"y\"]".into(), "say which"),
        ("input names unknown stage", "[stages.a]\nkind = \"needs-text\"\ninputs = { source = \"nope\" }".into(), "`nope`, which is not defined"),
        ("unknown input name", format!("{good_head}[stages.b]\nkind = \"needs-text\"\ninputs = {{ src = \"a\" }}"), "no input named `src`"),
        ("inputs not a table", format!("{good_head}inputs = 3"), "`inputs` must be a table"),
        ("undefined variable", format!("{good_head}value = \"${{model.source}}\""), "variable `${model.source}` is not defined"),
        ("sweep not a list", format!("{good_head}[sweep]\nvalue = 3"), "expected a list of values"),
        ("sweep empty", format!("{good_head}[sweep]\nvalue = []"), "no values"),
        ("sweep repeated value", format!("{good_head}[sweep]\nvalue = [\"x\", \"x\"]"), "repeats a value"),
        ("sweep unknown param", format!("{good_head}[sweep]\nsparsity = [0.1]"), "no stage has a parameter `sparsity`"),
        ("sweep bad value type", format!("{good_head}[sweep]\nsteps = [1, \"two\"]"), "expected an integer"),
        ("sweep unknown stage", format!("{good_head}[sweep]\nvalue = {{ values = [\"x\"], stages = [\"q\"] }}"), "names stage `q`"),
        ("sweep table without values", format!("{good_head}[sweep]\nvalue = {{ vals = [1] }}"), "values = [...]"),
        ("sweep nested values", format!("{good_head}[sweep]\nvalue = [[1], [2]]"), "numbers, strings or booleans"),
        ("pipeline not found", "pipeline = \"nope\"".into(), "pipeline `nope` not found"),
        ("bad stage name", "[stages.\"a@b\"]\nkind = \"text\"".into(), "may not be empty or contain"),
        ("duplicate key", format!("{good_head}kind = \"text\""), "duplicate"),
    ];
    assert!(cases.len() >= 30);
    let env = Env::new();
    for (what, body, expect) in cases {
        let p = env.recipe("bad.toml", &body);
        let err = match ddp::recipe::load(&p, &registry()) {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => e,
        };
        let text = err.to_string();
        assert!(!err.0.is_empty(), "{what}");
        for problem in &err.0 {
            assert!(
                problem.line >= 1 && problem.col >= 1,
                "{what}: no location in {text}"
            );
            assert!(
                problem.file.to_string_lossy().ends_with(".toml"),
                "{what}: {text}"
            );
        }
        assert!(text.contains("bad.toml:"), "{what}: {text}");
        assert!(
            text.contains(expect),
            "{what}: expected {expect:?} in:\n{text}"
        );
    }
}

#[test]
fn sweep_names_are_stable_and_readable() {
    let env = Env::new();
    let r = env.recipe(
        "m.toml",
        "[stages.a]\nkind = \"text\"\n[stages.b]\nkind = \"text\"\nafter = [\"a\"]\n[sweep]\nsteps = { values = [1, 2], stages = [\"b\"] }\nmode = { values = [\"a\", \"b\"], stages = [\"b\"] }\n",
    );
    let rec = ddp::recipe::load(&r, &registry()).unwrap();
    let names: Vec<&str> = rec.instances.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "a",
            "b@steps=1,mode=a",
            "b@steps=1,mode=b",
            "b@steps=2,mode=a",
            "b@steps=2,mode=b"
        ]
    );
    assert_eq!(
        rec.instance("b@steps=2,mode=a").unwrap().params["steps"],
        Value::Integer(2)
    );
}

#[test]
fn independent_stages_run_in_parallel_with_jobs() {
    let env = Env::new();
    let r = env.recipe(
        "p.toml",
        "[stages.a]\nkind = \"text\"\nvalue = \"a\"\nlog = \"LOG\"\n[stages.b]\nkind = \"text\"\nafter = [\"a\"]\nsteps = 8\nsleep_ms = 50\nlog = \"LOG\"\n[sweep]\nvalue = { values = [\"x\", \"y\", \"z\", \"w\"], stages = [\"b\"] }\n",
    );
    let rec = ddp::recipe::load(&r, &registry()).unwrap();
    let opts = Options {
        jobs: 4,
        ..env.opts()
    };
    let s = engine::run(&rec, &registry(), &env.cache(), &opts).unwrap();
    assert_eq!(s.executed(), 5);
    for v in ["x", "y", "z", "w"] {
        assert_eq!(
            fs::read_to_string(env.root.join(format!("out/p/b@value={v}/out.txt"))).unwrap(),
            format!("a[1]{v}[8]")
        );
    }
    assert_eq!(env.log_lines().len(), 5, "each instance ran once");
}
