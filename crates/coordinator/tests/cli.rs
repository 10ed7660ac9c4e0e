//! `smscoord` as a user runs it: bad flags and an address in use are clear
//! errors with a usage exit code. (Having an integration test here also makes
//! `cargo test --workspace` build `smscoord` for the process tests in `tests/`.)

use std::process::Command;

const SMSCOORD: &str = env!("CARGO_BIN_EXE_smscoord");

#[test]
fn bad_flags_exit_with_a_usage_error() {
    let out = Command::new(SMSCOORD)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--insecure-no-auth",
            "--plaintext",
            "--node-timeout",
            "1s",
            "--heartbeat-interval",
            "2s",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--node-timeout must be longer than --heartbeat-interval")
    );
    let out = Command::new(SMSCOORD)
        .args(["--listen", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap rejects a bad address");
}

#[test]
fn an_address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(SMSCOORD)
        .args(["--listen", &addr, "--insecure-no-auth", "--plaintext"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("cannot listen on {addr}")));
}
