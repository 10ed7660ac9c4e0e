//! `smsnode` as a user runs it: bad flags are clear errors with a usage exit
//! code. (Having an integration test here also makes `cargo test --workspace`
//! build `smsnode` for the process tests in `tests/`.)

use std::process::Command;

const SMSNODE: &str = env!("CARGO_BIN_EXE_smsnode");

#[test]
fn bad_flags_exit_with_a_usage_error() {
    for (args, want) in [
        (
            &["--failure-rate", "1.5"][..],
            "--failure-rate must be between 0 and 1",
        ),
        (
            &["--concurrency", "0"][..],
            "--concurrency must be at least 1",
        ),
        (&["--gateway", "smpp"][..], "unknown --gateway \"smpp\""),
        (
            &["--prefetch", "5", "--prefetch-max", "4"][..],
            "--prefetch-max (4) must be at least the prefetch (5)",
        ),
        (
            &["--instances", "0"][..],
            "--instances must be between 1 and 10000",
        ),
    ] {
        let out = Command::new(SMSNODE).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let out = Command::new(SMSNODE)
        .args(["--mean-latency", "fast"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap rejects a bad duration");
}

#[test]
fn a_bad_coordinator_url_is_refused_at_once() {
    let out = Command::new(SMSNODE)
        .args(["--coordinator", "not a url"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad coordinator URL"));
}
