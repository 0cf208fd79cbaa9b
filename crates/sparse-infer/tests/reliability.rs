//! Faults a long run must survive and inputs it must refuse cleanly:
//! mutated training configurations (fuzz, with an allocation bound), absurd
//! model sizes, diverging runs, a full disk and a read-only folder. The
//! SIGKILL tests live in tests/train.rs. Counts are quoted in
//! docs/reliability.md.

mod common;
#[path = "../../sparse-core/tests/support/count_alloc.rs"]
mod count_alloc;
#[allow(dead_code)] // train.rs dispatches store configurations to it
#[path = "../src/lm_train.rs"]
mod lm_train;
#[allow(dead_code)] // the binary's own module: only the parsing is used here
#[path = "../src/train.rs"]
mod train;

use common::{bin, fails_with, ok_json, s, synth};
use proptest::prelude::*;
use sparse_core::checkpoint;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

#[global_allocator]
static ALLOC: count_alloc::Counting = count_alloc::Counting;

/// Fuzz cases per strategy in CI (quoted in docs/reliability.md).
const CASES: u32 = 256;
/// Bound on any allocation while parsing and building a fuzzed configuration.
const ALLOC_BOUND: usize = 64 << 20;

/// Valid configurations of every method, the seeds of the mutations.
const SEEDS: &[&str] = &[
    "method = \"sae\"\nlambda = 0.02\nlr = 0.003\n",
    "method = \"mlp\"\nhidden = 12\n",
    "method = \"topk\"\nk = 3\nbatch_size = 16\n",
    "method = \"batchtopk\"\nk = 3\n",
    "method = \"jumprelu\"\nthreshold = 0.05\nbandwidth = 0.05\nl0_coefficient = 0.01\n",
    "method = \"matryoshka\"\nk = 3\nwidths = [4, 16]\n",
    "method = \"mp-sae\"\nk = 3\n",
    "method = \"sparse-coding\"\nlambda = 0.05\nfista_iters = 10\n",
];
const COMMON: &str =
    "data = \"d.npy\"\nn_latents = 16\nsteps = 100\ncheckpoint_every = 10\nout = \"o\"\nseed = 7\n";

/// Parses `text` and, if it is valid and small, builds the model for
/// 8-dimensional data of 64 samples; never panics, allocates under the bound.
fn parse_and_build(text: &str) {
    let ((), peak) = count_alloc::bounded(ALLOC_BOUND, || {
        let path = Path::new("/nonexistent/fuzz.toml");
        let Ok(cfg) = train::parse_config(text, path) else {
            return;
        };
        match cfg.memory_estimate(64, 8) {
            // Only sizes a test may allocate are built; the estimate must
            // then bound what building really takes.
            Some(est) if est < (ALLOC_BOUND / 2) as u64 => {
                let (built, used) = count_alloc::bounded(ALLOC_BOUND, || cfg.build(8).is_ok());
                assert!(
                    !built || used as u64 <= est,
                    "{text}: built with {used} bytes, estimated {est}"
                );
            }
            // Larger ones are refused before allocation when over the
            // machine's memory, or with an overflow.
            _ => {
                let _ = cfg.check_memory(64, 8);
            }
        }
    });
    assert!(peak <= ALLOC_BOUND, "{text}: peak {peak} bytes");
}

/// A TOML value at the edges: sizes that overflow, negative, huge, wrong types.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("18446744073709551615".to_string()),
        Just("9223372036854775807".to_string()),
        Just("4294967296".to_string()),
        Just("1e39".to_string()),
        Just("nan".to_string()),
        Just("inf".to_string()),
        Just("\"x\"".to_string()),
        Just("[]".to_string()),
        Just("[0, 99999999999]".to_string()),
        Just("{}".to_string()),
        (0u64..100).prop_map(|v| v.to_string()),
        (1u64..1 << 40).prop_map(|v| v.to_string()),
    ]
}

const KEYS: &[&str] = &[
    "method",
    "n_latents",
    "steps",
    "checkpoint_every",
    "batch_size",
    "lambda",
    "lr",
    "k",
    "hidden",
    "fista_iters",
    "threshold",
    "bandwidth",
    "l0_coefficient",
    "widths",
    "layers",
    "seed",
    "data",
];

proptest! {
    #![proptest_config(count_alloc::fuzz_config(CASES))]

    /// Random byte edits, cuts and insertions of valid configurations.
    #[test]
    fn mutated_config_bytes_never_panic(
        which in 0usize..SEEDS.len(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in any::<usize>(),
    ) {
        let mut b = format!("{}{COMMON}", SEEDS[which]).into_bytes();
        for (pos, byte) in edits {
            let i = pos % b.len();
            b[i] = byte;
        }
        b.truncate(b.len() - cut % 8);
        parse_and_build(&String::from_utf8_lossy(&b));
    }

    /// Structure-aware: one key set (or overridden) to an extreme value.
    #[test]
    fn extreme_config_values_never_panic(
        which in 0usize..SEEDS.len(),
        key in 0usize..KEYS.len(),
        value in toml_value(),
    ) {
        let key = KEYS[key];
        let base = format!("{}{COMMON}", SEEDS[which]);
        let kept: String = base
            .lines()
            .filter(|l| !l.starts_with(&format!("{key} =")))
            .map(|l| format!("{l}\n"))
            .collect();
        parse_and_build(&format!("{kept}{key} = {value}\n"));
    }
}

/// The quick configuration of every study as TOML: the seeds of the
/// `reproduce --config` fuzz.
fn study_seeds() -> Vec<String> {
    use sparse_study::Study;
    fn toml_of<S: Study + serde::Serialize>() -> String {
        toml::to_string(&S::quick_config()).expect("study configs serialise to TOML")
    }
    vec![
        toml_of::<sparse_study::known_dictionary::KnownDictionaryConfig>(),
        toml_of::<sparse_study::learned_dictionary::LearnedDictionaryConfig>(),
        toml_of::<sparse_study::amortisation_gap::GapGridConfig>(),
    ]
}

proptest! {
    #![proptest_config(count_alloc::fuzz_config(CASES))]

    /// Byte edits of the studies' configurations (`reproduce --config`):
    /// parsing gives a value or an error, never a panic or a large allocation.
    #[test]
    fn mutated_study_configs_never_panic(
        which in 0usize..3,
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        use sparse_study::{amortisation_gap::GapGridConfig as G, known_dictionary::KnownDictionaryConfig as K, learned_dictionary::LearnedDictionaryConfig as L};
        let mut b = study_seeds()[which].clone().into_bytes();
        for (pos, byte) in edits {
            let i = pos % b.len();
            b[i] = byte;
        }
        let text = String::from_utf8_lossy(&b).into_owned();
        let (_, peak) = count_alloc::bounded(ALLOC_BOUND, || {
            let _ = toml::from_str::<K>(&text);
            let _ = toml::from_str::<L>(&text);
            let _ = toml::from_str::<G>(&text);
        });
        prop_assert!(peak <= ALLOC_BOUND);
    }
}

fn write_config(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn absurd_sizes_are_refused_before_allocation() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(tmp.path());
    for (n_latents, needle) in [
        ("1000000000000", "more than the"),
        ("4611686018427387904", "overflows"),
    ] {
        let cfg = write_config(
            tmp.path(),
            "big.toml",
            &format!(
                "method = \"sae\"\ndata = {:?}\nn_latents = {n_latents}\nsteps = 1\nout = \"o\"\n",
                s(&data)
            ),
        );
        fails_with(&["train", "--config", &s(&cfg)], &[needle, "n_latents"]);
    }
}

#[test]
fn a_diverging_run_stops_keeps_its_last_good_checkpoint_and_names_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(tmp.path());
    // Each case: method lines and an lr so large that step 2 diverges.
    for (name, lines, lr) in [
        ("sae", "method = \"sae\"\nlambda = 0.02\n", "10"),
        ("topk", "method = \"topk\"\nk = 3\n", "100"),
        (
            "lista",
            "method = \"lista\"\ndictionary = \"synth/dictionary.npy\"\n",
            "100",
        ),
    ] {
        let cfg = |out: &str, steps: u64| {
            write_config(
                tmp.path(),
                &format!("{name}-{out}.toml"),
                &format!(
                    "{lines}lr = {lr}.0\ndata = {:?}\nn_latents = 16\nsteps = {steps}\ncheckpoint_every = 1\nout = {out:?}\nseed = 7\n",
                    s(&data)
                ),
            )
        };
        let out = tmp.path().join(format!("{name}-div"));
        fails_with(
            &["train", "--config", &s(&cfg(&format!("{name}-div"), 50))],
            &[
                "training diverged at step 2",
                "last finite loss",
                "at step 1",
                "kept the last good checkpoint, step 1",
                &format!("likely fix: lower `lr` (now {lr})"),
            ],
        );
        // The checkpoint kept is exactly the one-step run's.
        let one = tmp.path().join(format!("{name}-one"));
        ok_json(&["train", "--config", &s(&cfg(&format!("{name}-one"), 1))]);
        let kept = checkpoint::load(&out).unwrap();
        assert_eq!(kept.step, 1, "{name}");
        assert_eq!(
            std::fs::read(out.join("model.safetensors")).unwrap(),
            std::fs::read(one.join("model.safetensors")).unwrap(),
            "{name}"
        );
    }
}

/// Runs the binary with `args` under a file-size limit of `limit` bytes,
/// SIGXFSZ ignored so that an oversized write fails with EFBIG instead of
/// killing the process: the effect of a disk filling up mid-write.
fn run_with_fsize_limit(args: &[&str], limit: u64) -> std::process::Output {
    let mut cmd = bin();
    cmd.args(args);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: limit as libc::rlim_t,
                rlim_max: limit as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().unwrap()
}

/// The one `error:` line of a failed run.
fn one_error_line(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("error:"), "{stderr}");
    lines[0].to_string()
}

/// Names in `dir` that start with a dot (temporaries, set-aside folders).
fn hidden_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn a_full_disk_gives_a_clear_error_and_keeps_the_previous_files() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(tmp.path());
    let cfg = |steps: u64| {
        write_config(
            tmp.path(),
            "t.toml",
            &format!(
                "method = \"topk\"\nk = 3\ndata = {:?}\nn_latents = 16\nsteps = {steps}\ncheckpoint_every = 10\nout = \"ck\"\nseed = 7\n",
                s(&data)
            ),
        )
    };
    ok_json(&["train", "--config", &s(&cfg(20))]);
    let out = tmp.path().join("ck");
    let before: Vec<Vec<u8>> = ["model.safetensors", "state.json"]
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect();
    // The checkpoint's files are a few KiB: 1 KiB cannot hold them.
    let r = run_with_fsize_limit(&["train", "--config", &s(&cfg(40))], 1024);
    let line = one_error_line(&r);
    for needle in [
        "writing the checkpoint of step 30",
        "ck",
        "File too large",
        "the disk is full",
    ] {
        assert!(line.contains(needle), "{line:?} lacks {needle:?}");
    }
    let after: Vec<Vec<u8>> = ["model.safetensors", "state.json"]
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect();
    assert!(before == after, "the previous checkpoint changed");
    assert_eq!(checkpoint::load(&out).unwrap().step, 20);
    assert!(
        hidden_entries(tmp.path()).is_empty(),
        "{:?}",
        hidden_entries(tmp.path())
    );
    // With room again, the run resumes and finishes.
    assert_eq!(
        ok_json(&["train", "--config", &s(&cfg(40))])["resumed_from"],
        20
    );

    // Encoded codes (128 × 16 f32 = 8 KiB) over the same limit.
    let z = tmp.path().join("z.npy");
    let r = run_with_fsize_limit(
        &[
            "encode",
            "--model",
            &s(&out),
            "--input",
            &s(&data),
            "--out",
            &s(&z),
        ],
        1024,
    );
    let line = one_error_line(&r);
    assert!(
        line.contains(&s(&z)) && line.contains("File too large"),
        "{line}"
    );
    assert!(!z.exists());
    assert!(
        hidden_entries(tmp.path()).is_empty(),
        "{:?}",
        hidden_entries(tmp.path())
    );
}

#[test]
fn a_read_only_folder_gives_a_clear_error() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(tmp.path());
    let locked = tmp.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    // Root ignores permissions: run the binary as `nobody` instead.
    let as_root = unsafe { libc::geteuid() } == 0;
    for p in [tmp.path(), data.parent().unwrap()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for f in std::fs::read_dir(data.parent().unwrap()).unwrap() {
        std::fs::set_permissions(f.unwrap().path(), std::fs::Permissions::from_mode(0o644))
            .unwrap();
    }
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    let run = |args: &[&str]| {
        let mut cmd = bin();
        cmd.args(args);
        if as_root {
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.output().unwrap()
    };
    if as_root && !run(&["--version"]).status.success() {
        eprintln!("skipped: running as root and cannot run the binary as nobody");
        return;
    }
    let z = locked.join("z.npy");
    let line = one_error_line(&run(&[
        "encode",
        "--method",
        "omp",
        "--k",
        "2",
        "--dictionary",
        &s(&data.with_file_name("dictionary.npy")),
        "--input",
        &s(&data),
        "--out",
        &s(&z),
    ]));
    assert!(
        line.contains(&s(&z)) && line.contains("no permission"),
        "{line}"
    );
    let cfg = write_config(
        tmp.path(),
        "ro.toml",
        &format!(
            "method = \"sae\"\ndata = {:?}\nn_latents = 16\nsteps = 2\nout = \"locked/ck\"\n",
            s(&data)
        ),
    );
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let line = one_error_line(&run(&["train", "--config", &s(&cfg)]));
    assert!(
        line.contains("cannot write checkpoints to")
            && line.contains("locked/ck")
            && line.contains("no permission"),
        "{line}"
    );
    assert_eq!(std::fs::read_dir(&locked).unwrap().count(), 0);
}
