//! `smsmon` as a user runs it. (Having an integration test here also makes
//! `cargo test --workspace` build `smsmon` for the process tests in `tests/`.)

use std::process::Command;

#[test]
fn an_unreachable_coordinator_is_a_clear_error() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = Command::new(env!("CARGO_BIN_EXE_smsmon"))
        .args(["--coordinator", &url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("cannot connect to {url}")));
}

#[test]
fn a_bare_host_and_port_is_taken_and_a_refusal_says_why() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // grpcurl style: no scheme. It is http://, and the error says what failed.
    let addr = format!("127.0.0.1:{port}");
    let out = Command::new(env!("CARGO_BIN_EXE_smsmon"))
        .args(["--coordinator", &addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot connect to {addr}")), "{err}");
    assert!(
        err.to_lowercase().contains("refused"),
        "the cause, not only 'transport error': {err}"
    );
}
