//! `sparse-infer bench`: the harness runs every case in child processes and
//! writes a complete report (ours only here: the Python references are not
//! installed in CI; `scripts/bench-setup` installs them for real runs).

use serde_json::Value;

mod common;
use common::{fails_with, run};

#[test]
fn quick_bench_reports_every_case_and_scaling_writes_its_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bench");
    let out_s = out.to_str().unwrap();
    let r = run(&[
        "bench", "--quick", "--rounds", "2", "--reps", "1", "--out", out_s,
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let summaries = report["summaries"].as_array().unwrap();
    assert_eq!(summaries.len(), sparse_bench::quick_cases().len());
    for s in summaries {
        assert_eq!(s["implementation"], "sparse-infer");
        assert_eq!(s["round_medians_s"].as_array().unwrap().len(), 2);
        assert!(s["median_s"].as_f64().unwrap() > 0.0, "{s}");
        assert!(s["peak_rss_bytes"].as_f64().unwrap() > 1e5, "{s}");
    }
    // One peak reading before each round; the peak is the best of them.
    let readings: Vec<f64> = report["fma_peak_readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(readings.len(), 2);
    assert!(readings.iter().all(|&g| g > 0.1), "{readings:?}");
    let best = readings.iter().copied().fold(0.0, f64::max);
    assert_eq!(report["fma_peak_gflops"].as_f64().unwrap(), best);
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(table.contains("gemm-128x64x256") && table.contains("known-dictionary"));

    let r = run(&[
        "bench",
        "--scaling",
        "--quick",
        "--reps",
        "1",
        "--out",
        out_s,
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    for axis in ["latents", "batch", "k"] {
        let svg = std::fs::read_to_string(out.join(format!("scaling_{axis}.svg"))).unwrap();
        assert!(svg.contains("<svg") && svg.contains("topk-step"), "{axis}");
    }

    fails_with(
        &["bench", "--quick", "--only", "nonesuch", "--out", out_s],
        &["--only", "nonesuch", "matches no case"],
    );
    fails_with(
        &[
            "bench",
            "--quick",
            "--python",
            "python3",
            "--reference",
            "/nonexistent/ref.py",
            "--out",
            out_s,
        ],
        &["/nonexistent/ref.py", "not found"],
    );
}
