//! The sweep system end to end through the binary: a killed sweep resumes to
//! the same store as an uninterrupted one, shards merge to the unsharded
//! store, the report renders, and bad input fails with one clear line.

mod common;

use common::{bin, fails_with, ok_json};
use sparse_sweep::{Store, StoredRun};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A learned-dictionary grid whose runs take a fraction of a second each.
const GRID: &str = r#"
name = "tiny"
eval_points = 4

[[data]]
n_latents = [8, 12]
dim = [4]
k = [2]
samples = [64]
seeds = [1, 2, 3]

[[method]]
kind = "sae"
steps = [STEPS]

[[method]]
kind = "sparse-coding"
lambda = [0.03]
steps = [4]
fista_iters = [20]
"#;

fn write_grid(dir: &Path, steps: usize) -> PathBuf {
    let path = dir.join("grid.toml");
    std::fs::write(&path, GRID.replace("STEPS", &steps.to_string())).unwrap();
    path
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every stored row with its wall-clock fields cleared (they alone may differ).
fn rows(store: &Path) -> Vec<StoredRun> {
    let mut rows = Store::open(store, false).unwrap().runs().unwrap();
    for r in &mut rows {
        r.outcome.wall_seconds = 0.0;
        r.finished_unix = 0;
    }
    rows
}

fn sweep(grid: &Path, store: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["sweep", s(grid), "--store", s(store), "--jobs", "1"];
    args.extend_from_slice(extra);
    ok_json(&args)
}

fn stored_count(store: &Path) -> usize {
    Store::open(store, false)
        .and_then(|s| s.runs())
        .map_or(0, |r| r.len())
}

#[test]
fn killed_sweep_resumes_with_every_run_exactly_once_and_identical_results() {
    let dir = tempfile::tempdir().unwrap();
    let grid = write_grid(dir.path(), 6000);
    let reference = dir.path().join("reference.sqlite");
    let summary = sweep(&grid, &reference, &[]);
    let total = summary["runs"].as_u64().unwrap() as usize;
    assert_eq!(total, 12);
    assert_eq!(summary["completed"], 12);

    // Start again on a fresh store and SIGKILL it once some runs are stored.
    let store = dir.path().join("killed.sqlite");
    let mut child = bin()
        .args(["sweep", s(&grid), "--store", s(&store), "--jobs", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while stored_count(&store) < 2 {
        assert!(Instant::now() < deadline, "the sweep stored nothing");
        assert!(child.try_wait().unwrap().is_none(), "the sweep ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    let at_kill = stored_count(&store);
    assert!(
        (2..total).contains(&at_kill),
        "killed with {at_kill} of {total} runs stored: the test needs some but not all"
    );

    // The restart skips what was stored, runs the rest, duplicates nothing.
    let resumed = sweep(&grid, &store, &[]);
    assert_eq!(resumed["skipped"], at_kill);
    assert_eq!(resumed["completed"], total - at_kill);
    let again = sweep(&grid, &store, &[]);
    assert_eq!(
        (again["skipped"].as_u64(), again["completed"].as_u64()),
        (Some(12), Some(0))
    );
    let (got, want) = (rows(&store), rows(&reference));
    assert_eq!(got.len(), total);
    let mut keys: Vec<&str> = got.iter().map(|r| r.run_key.as_str()).collect();
    keys.dedup();
    assert_eq!(keys.len(), total, "a run key appears twice");
    // Same seed + config → same numbers, interrupted or not.
    assert_eq!(got, want);
}

#[test]
fn two_shards_merged_equal_the_unsharded_store_and_slurm_variables_pick_the_shard() {
    let dir = tempfile::tempdir().unwrap();
    let grid = write_grid(dir.path(), 100);
    let whole = dir.path().join("whole.sqlite");
    sweep(&grid, &whole, &[]);
    let a = dir.path().join("a.sqlite");
    let b = dir.path().join("b.sqlite");
    let sa = sweep(&grid, &a, &["--shard", "0/2"]);
    let sb = sweep(&grid, &b, &["--shard", "1/2"]);
    assert_eq!(
        sa["runs"].as_u64().unwrap() + sb["runs"].as_u64().unwrap(),
        12
    );
    assert_eq!(sa["runs"], 6);

    // A Slurm array task computes the same slice as --shard.
    let slurm = dir.path().join("slurm.sqlite");
    let out = bin()
        .args(["sweep", s(&grid), "--store", s(&slurm), "--jobs", "1"])
        .env("SLURM_ARRAY_TASK_ID", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "2")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(rows(&slurm), rows(&b));

    let merged = dir.path().join("merged/all.sqlite");
    let m = ok_json(&["merge", "--into", s(&merged), s(&a), s(&b)]);
    assert_eq!(
        (m["inserted"].as_u64(), m["conflicts"].as_u64()),
        (Some(12), Some(0))
    );
    assert_eq!(rows(&merged), rows(&whole));
    // Merging again adds nothing.
    let m = ok_json(&["merge", "--into", s(&merged), s(&a)]);
    assert_eq!(
        (m["inserted"].as_u64(), m["identical"].as_u64()),
        (Some(0), Some(6))
    );

    // The report of the merged store: tables, figures in both formats, one page.
    let report = dir.path().join("report");
    let r = ok_json(&["report", "--store", s(&merged), "--out", s(&report)]);
    let figures = r["figures"].as_u64().unwrap() as usize;
    assert!(figures >= 3, "{r}");
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(md.contains("## Scaling") && md.contains("## Compute-optimal frontier"));
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), figures);
    let pngs = std::fs::read_dir(report.join("figures"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().unwrap() == "png")
        .count();
    assert_eq!(pngs, figures);
}

#[test]
fn bad_sweep_input_fails_with_one_line_naming_the_culprit() {
    let dir = tempfile::tempdir().unwrap();
    let grid = write_grid(dir.path(), 10);
    let store = dir.path().join("s.sqlite");
    fails_with(
        &["sweep", s(&grid), "--store", s(&store), "--shard", "3/2"],
        &["3/2"],
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        GRID.replace("STEPS", "10")
            .replace("eval_points", "colour = 1\neval_points"),
    )
    .unwrap();
    fails_with(
        &["sweep", s(&bad), "--store", s(&store)],
        &["bad.toml", "colour"],
    );
    fails_with(
        &["sweep", s(&dir.path().join("absent.toml"))],
        &["absent.toml"],
    );
    assert!(!store.exists(), "nothing created by a failed start");
    let missing = dir.path().join("missing.sqlite");
    let out = dir.path().join("out");
    fails_with(
        &["report", "--store", s(&missing), "--out", s(&out)],
        &["missing.sqlite", "does not exist"],
    );
    let corrupt = dir.path().join("corrupt.sqlite");
    std::fs::write(
        &corrupt,
        b"this is not a database at all, just some text".repeat(100),
    )
    .unwrap();
    fails_with(
        &["report", "--store", s(&corrupt), "--out", s(&out)],
        &["corrupt.sqlite"],
    );
    fails_with(
        &[
            "merge",
            "--into",
            s(&dir.path().join("m.sqlite")),
            s(&corrupt),
        ],
        &["corrupt.sqlite"],
    );
    assert!(!dir.path().join("m.sqlite").exists());
}

#[test]
fn reproduce_without_a_study_runs_both_studies_the_scaling_sweep_and_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let run = bin()
        .args(["reproduce", "--quick", "--seeds", "1", "--out", s(&out)])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for study in ["known-dictionary", "learned-dictionary"] {
        assert!(out.join(study).join("results.json").is_file(), "{study}");
    }
    assert_eq!(rows(&out.join("smoke.sqlite")).len(), 8);
    let md = std::fs::read_to_string(out.join("report/report.md")).unwrap();
    for needle in [
        "## Scaling",
        "## Known-dictionary study",
        "## Learned-dictionary study",
        "| sc-mod |",
    ] {
        assert!(md.contains(needle), "{needle} missing");
    }
    let html = std::fs::read_to_string(out.join("report/index.html")).unwrap();
    assert!(html.contains("<table>") && html.contains("<svg"));
}
