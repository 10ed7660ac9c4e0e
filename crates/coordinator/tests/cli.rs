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

#[test]
fn logs_are_json_lines_when_asked_for() {
    use std::io::BufRead;
    let mut child = Command::new(SMSCOORD)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--insecure-no-auth",
            "--plaintext",
            "--in-memory",
        ])
        .env("SMSMESH_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let line: serde_json::Value = serde_json::from_str(&first).expect("a JSON object per line");
    assert_eq!(line["level"], "WARN", "{line}");
    assert!(line["fields"]["message"].is_string(), "{line}");
    assert!(line["timestamp"].is_string(), "{line}");
}
