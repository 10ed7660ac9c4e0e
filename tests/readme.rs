//! The README's commands name things that exist: each `cargo build` in it
//! builds the programs it runs (the workspace's, not only the root package's,
//! which has none), each `target/release/NAME` is a program of the workspace,
//! and each `cargo run -p PKG` names a package of it.

use std::collections::HashSet;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

/// (packages, programs) of the workspace, from `cargo metadata`.
fn workspace() -> (HashSet<String>, HashSet<String>) {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (mut packages, mut bins) = (HashSet::new(), HashSet::new());
    for p in meta["packages"].as_array().unwrap() {
        packages.insert(p["name"].as_str().unwrap().to_string());
        for t in p["targets"].as_array().unwrap() {
            if t["kind"].as_array().unwrap().iter().any(|k| k == "bin") {
                bins.insert(t["name"].as_str().unwrap().to_string());
            }
        }
    }
    (packages, bins)
}

#[test]
fn the_readme_s_commands_name_what_exists() {
    let text = readme();
    let (packages, bins) = workspace();
    let builds: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("cargo build"))
        .collect();
    assert!(!builds.is_empty());
    for line in builds {
        assert!(
            line.contains("--workspace") || line.contains(" -p ") || line.contains("--bin "),
            "`{line}` builds only the root package, which has no programs"
        );
    }
    let mut named = 0;
    for word in text.split(|c: char| c.is_whitespace() || c == '`' || c == '(' || c == ')') {
        if let Some(rest) = word.strip_prefix("target/release/") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            if name.is_empty() {
                continue; // e.g. target/release/{smscoord,...}
            }
            assert!(
                bins.contains(&name),
                "target/release/{name} is not a program of the workspace"
            );
            named += 1;
        }
    }
    assert!(named > 0);
    for line in text.lines().filter(|l| l.contains("cargo run")) {
        if let Some(pkg) = line
            .split(" -p ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
        {
            assert!(
                packages.contains(pkg),
                "`cargo run -p {pkg}`: no such package"
            );
        }
    }
}

/// The long flags `program [command] --help` lists.
fn flags(program: &str, command: Option<&str>) -> Vec<String> {
    let out = std::process::Command::new(smsmesh_testkit::bin(program))
        .args(command)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    help.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l
                .strip_prefix("-")
                .and_then(|r| r.split_once(", "))
                .map_or(l, |(_, r)| r);
            l.strip_prefix("--")
                .map(|r| {
                    r.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                        .next()
                        .unwrap_or("")
                })
                .filter(|f| !f.is_empty())
                .map(|f| format!("--{f}"))
        })
        .filter(|f| f != "--help" && f != "--version")
        .collect()
}

#[test]
fn every_flag_of_the_programs_is_in_the_readme() {
    let text = readme();
    for (program, command) in [
        ("smscoord", None),
        ("smsnode", None),
        ("smsmon", None),
        ("smsmon", Some("export")),
    ] {
        let flags = flags(program, command);
        assert!(flags.len() > 3, "{program} {command:?}: {flags:?}");
        for f in flags {
            assert!(
                text.contains(&format!("`{f}`"))
                    || text.contains(&format!("`{f} "))
                    || text.contains(&format!("{f}`")),
                "{program} {f} is not in README.md"
            );
        }
    }
}
