//! The benchmark tool runs end to end at a tiny scale and writes its results.
//! (Speed is measured by running it in release, not here.)

#[test]
fn the_bench_runs_its_scenarios_and_writes_results() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let md = dir.path().join("r.md");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smsmesh-bench"))
        .args(["--scenarios", "a,e", "--scale", "0.005"])
        .arg("--json")
        .arg(&json)
        .arg("--markdown")
        .arg(&md)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let scenarios = results.as_array().unwrap();
    assert_eq!(scenarios.len(), 2);
    for s in scenarios {
        for run in s["runs"].as_array().unwrap() {
            assert_eq!(run["sent"], run["messages"], "every message sent: {run}");
            assert!(run["msgs_per_sec"].as_f64().unwrap() > 0.0);
            assert!(run["coordinator_peak_rss_mib"].as_f64().unwrap() > 0.0);
        }
    }
    assert!(
        std::fs::read_to_string(&md)
            .unwrap()
            .contains("| (e) one node at a tenth")
    );
}
