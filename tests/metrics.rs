//! Prometheus metrics: `/metrics` scraped over real sockets and read with a
//! Prometheus text parser, its figures checked against what the gateways
//! saw; and a real Prometheus server (Debian's `prometheus`, which `.ci/run`
//! installs) scraping coordinator and node processes.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use prometheus_parse::{Sample, Scrape, Value};
use smsmesh::pb;
use smsmesh_testkit::{
    CoordinatorConfig, Mesh, NodeSpec, Proc, Recorder, bin, http_get, stdout_addrs, synthetic,
    wait_ended, wait_until,
};

const LONG: Duration = Duration::from_secs(60);

async fn scrape(addr: SocketAddr) -> Scrape {
    let (code, body) = http_get(addr, "/metrics").await.unwrap();
    assert_eq!(code, 200, "{body}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("valid Prometheus text")
}

fn value(s: &Sample) -> f64 {
    match &s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{} is not a plain value: {other:?}", s.metric),
    }
}

/// Sum of the samples of `metric` whose labels include all of `labels`.
fn sum(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(value)
        .sum()
}

fn has(scrape: &Scrape, metric: &str) -> bool {
    scrape.samples.iter().any(|s| s.metric == metric)
}

/// The count (the `+Inf` bucket) of histogram `metric`.
fn histogram_count(scrape: &Scrape, metric: &str) -> u64 {
    let s = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric)
        .unwrap_or_else(|| panic!("no histogram {metric}"));
    match &s.value {
        Value::Histogram(buckets) => {
            let mut last = 0.0;
            for b in buckets {
                assert!(b.count >= last, "{metric}: buckets are cumulative");
                last = b.count;
            }
            let inf = buckets.last().expect("buckets");
            assert!(inf.less_than.is_infinite(), "{metric}: ends with +Inf");
            inf.count as u64
        }
        other => panic!("{metric} is not a histogram: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_what_the_gateways_saw() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start(CoordinatorConfig {
        data_dir: Some(dir.path().to_path_buf()),
        retry_base: Duration::from_millis(5),
        retry_max: Duration::from_millis(50),
        ..CoordinatorConfig::default()
    })
    .await
    .unwrap();
    let rec = Recorder::default();
    let _nodes: Vec<_> = ["m0", "m1"]
        .iter()
        .map(|n| {
            mesh.node(
                NodeSpec::new(n)
                    .concurrency(40)
                    .failure_rate(0.3)
                    .record(&rec),
            )
        })
        .collect();
    let mut client = mesh.client().await.unwrap();
    let total = 3000;
    let id = client
        .submit_batch(synthetic(total, 11))
        .await
        .unwrap()
        .into_inner()
        .batch_id;
    let b = wait_ended(&mut client, &id, LONG).await.unwrap();
    assert_eq!(b.sent + b.failed, total);
    assert!(b.failed > 0 && b.retried > 0, "failures to count: {b:?}");

    // The snapshot behind /metrics is published as the batch ends.
    let m = wait_until(LONG, "final figures in /metrics", || async {
        let m = scrape(mesh.metrics_addr).await;
        let done = sum(&m, "smsmesh_messages_total", &[("outcome", "sent")]) == b.sent as f64
            && sum(&m, "smsmesh_messages_total", &[("outcome", "failed")]) == b.failed as f64;
        done.then_some(m)
    })
    .await
    .unwrap();

    let attempts = rec.attempts();
    let gw_sent = attempts.iter().filter(|a| a.sent).count() as f64;
    let gw_failed = attempts.iter().filter(|a| !a.sent).count() as f64;
    assert_eq!(
        sum(&m, "smsmesh_messages_accepted_total", &[]),
        total as f64
    );
    assert_eq!(
        sum(&m, "smsmesh_messages_total", &[("outcome", "cancelled")]),
        0.0
    );
    assert_eq!(
        sum(&m, "smsmesh_attempts_total", &[("outcome", "sent")]),
        gw_sent
    );
    assert_eq!(
        sum(&m, "smsmesh_attempts_total", &[("outcome", "failed")]),
        gw_failed
    );
    for node in ["m0", "m1"] {
        let by_gw = attempts.iter().filter(|a| a.node == node).count() as f64;
        assert_eq!(
            sum(&m, "smsmesh_attempts_total", &[("node", node)]),
            by_gw,
            "{node}"
        );
        assert!(by_gw > 0.0, "both nodes worked");
    }
    assert_eq!(sum(&m, "smsmesh_retries_total", &[]), b.retried as f64);
    assert_eq!(
        sum(&m, "smsmesh_retries_total", &[]),
        gw_failed - b.failed as f64
    );
    assert_eq!(sum(&m, "smsmesh_messages_in_flight", &[]), 0.0);
    assert_eq!(sum(&m, "smsmesh_messages_pending", &[]), 0.0);
    assert_eq!(sum(&m, "smsmesh_nodes_connected", &[]), 2.0);
    assert_eq!(sum(&m, "smsmesh_node_joins_total", &[]), 2.0);
    assert_eq!(sum(&m, "smsmesh_batches_accepted_total", &[]), 1.0);
    assert_eq!(sum(&m, "smsmesh_batches_running", &[]), 0.0);
    assert_eq!(
        sum(&m, "smsmesh_batches_ended_total", &[("state", "completed")]),
        1.0
    );
    assert!(
        !has(&m, "smsmesh_batch_pending_messages"),
        "no running batch left"
    );
    // Credits: every job used one; what is left is outstanding, up to each node's limit.
    let granted = sum(&m, "smsmesh_credits_granted_total", &[]);
    let outstanding = sum(&m, "smsmesh_credits_outstanding", &[]);
    assert_eq!(
        granted - outstanding,
        gw_sent + gw_failed,
        "credits used = jobs sent"
    );
    assert_eq!(
        outstanding,
        sum(&m, "smsmesh_node_credits_outstanding", &[]),
        "per-node credits add up"
    );
    assert!(outstanding <= sum(&m, "smsmesh_node_concurrency", &[]));
    assert_eq!(
        histogram_count(&m, "smsmesh_send_latency_seconds") as f64,
        gw_sent + gw_failed,
        "one latency per attempt"
    );
    assert!(
        histogram_count(&m, "smsmesh_store_commit_seconds") > 0,
        "commits timed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_per_batch_shows_while_a_batch_runs_only_when_asked_for() {
    // By default no batch id shows in /metrics.
    let quiet = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let mut c = quiet.client().await.unwrap();
    c.submit_batch(synthetic(50, 1)).await.unwrap();
    let m = wait_until(LONG, "the batch in /metrics", || async {
        let m = scrape(quiet.metrics_addr).await;
        (sum(&m, "smsmesh_batches_running", &[]) == 1.0).then_some(m)
    })
    .await
    .unwrap();
    assert!(
        !has(&m, "smsmesh_batch_pending_messages"),
        "no batch ids by default"
    );

    let mesh = Mesh::start(CoordinatorConfig {
        metrics_per_batch: true,
        ..CoordinatorConfig::default()
    })
    .await
    .unwrap();
    let mut client = mesh.client().await.unwrap();
    // No node yet: everything stays pending.
    let id = client
        .submit_batch(synthetic(500, 1))
        .await
        .unwrap()
        .into_inner()
        .batch_id;
    let m = wait_until(LONG, "the batch in /metrics", || async {
        let m = scrape(mesh.metrics_addr).await;
        has(&m, "smsmesh_batch_pending_messages").then_some(m)
    })
    .await
    .unwrap();
    assert_eq!(
        sum(&m, "smsmesh_batch_pending_messages", &[("batch_id", &id)]),
        500.0
    );
    assert_eq!(sum(&m, "smsmesh_messages_pending", &[]), 500.0);
    assert_eq!(sum(&m, "smsmesh_batches_running", &[]), 1.0);
    assert_eq!(sum(&m, "smsmesh_nodes_connected", &[]), 0.0);

    let _node = mesh.node(NodeSpec::new("late").concurrency(50));
    wait_ended(&mut client, &id, LONG).await.unwrap();
    wait_until(
        LONG,
        "the ended batch to leave the pending gauge",
        || async {
            let m = scrape(mesh.metrics_addr).await;
            (!has(&m, "smsmesh_batch_pending_messages")
                && sum(&m, "smsmesh_node_in_flight", &[("node", "late")]) == 0.0)
                .then_some(())
        },
    )
    .await
    .unwrap();
}

fn prometheus_binary() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What Prometheus's HTTP API answers to `path` (the `data` member).
async fn prom_api(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let (code, body) = http_get(addr, path).await.ok()?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    (v["status"] == "success").then(|| v["data"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_coordinator_and_node() {
    let Some(prometheus) = prometheus_binary() else {
        // .ci/run installs it (Debian's `prometheus`) and sets SMSMESH_REQUIRE_PROMETHEUS=1.
        assert!(
            std::env::var_os("SMSMESH_REQUIRE_PROMETHEUS").is_none(),
            "SMSMESH_REQUIRE_PROMETHEUS is set but no `prometheus` is on PATH"
        );
        eprintln!("SKIPPED: no `prometheus` on PATH (apt-get install prometheus to run this test)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut coord = Command::new(bin("smscoord"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--insecure-no-auth", "--plaintext"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let [addr, coord_metrics] = stdout_addrs(
        &mut coord,
        &["smscoord listening on ", "smscoord metrics on "],
    )
    .unwrap()[..] else {
        unreachable!()
    };
    let _coord = Proc { child: coord };
    let mut node = Command::new(bin("smsnode"))
        .args([
            "--coordinator",
            &format!("http://{addr}"),
            "--name",
            "prom-node",
        ])
        .args(["--metrics-listen", "127.0.0.1:0", "--mean-latency", "1ms"])
        // Three nodes in the process: one endpoint serves all, a `node` label each.
        .args(["--instances", "3"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let node_metrics = stdout_addrs(&mut node, &["smsnode metrics on "]).unwrap()[0];
    let _node = Proc { child: node };

    let mut client = pb::coordinator_client::CoordinatorClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let total = 5000u64;
    let id = client
        .submit_batch(synthetic(total, 5))
        .await
        .unwrap()
        .into_inner()
        .batch_id;
    let b = wait_ended(&mut client, &id, LONG).await.unwrap();
    assert_eq!(b.sent, total);

    // Prometheus cannot report a port it picked, so it gets one that was free a moment ago.
    let prom_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n\
             \x20 - job_name: smscoord\n    static_configs:\n      - targets: ['{coord_metrics}']\n\
             \x20 - job_name: smsnode\n    static_configs:\n      - targets: ['{node_metrics}']\n"
        ),
    )
    .unwrap();
    let prom = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={prom_addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _prom = Proc { child: prom };

    let targets = wait_until(LONG, "both targets up in Prometheus", || async {
        let data = prom_api(prom_addr, "/api/v1/targets").await?;
        let active = data["activeTargets"].as_array()?.clone();
        let up = active.iter().filter(|t| t["health"] == "up").count();
        (active.len() == 2 && up == 2).then_some(active)
    })
    .await
    .unwrap();
    let jobs: Vec<&str> = targets
        .iter()
        .filter_map(|t| t["labels"]["job"].as_str())
        .collect();
    assert!(
        jobs.contains(&"smscoord") && jobs.contains(&"smsnode"),
        "{jobs:?}"
    );

    let query = |q: &'static str| async move {
        let data = prom_api(prom_addr, &format!("/api/v1/query?query={q}")).await?;
        let r = data["result"].as_array()?.first()?.clone();
        r["value"][1].as_str()?.parse::<f64>().ok()
    };
    // sum(smsmesh_messages_total{outcome="sent"}), URL-encoded.
    let sent = wait_until(LONG, "the sent counter in Prometheus", || async {
        query("sum(smsmesh_messages_total%7Boutcome%3D%22sent%22%7D)")
            .await
            .filter(|v| *v == total as f64)
    })
    .await
    .unwrap();
    assert_eq!(sent, total as f64);
    let node_sent = wait_until(LONG, "the node's attempts in Prometheus", || async {
        query("sum(smsnode_attempts_total%7Boutcome%3D%22sent%22%7D)")
            .await
            .filter(|v| *v == total as f64)
    })
    .await
    .unwrap();
    assert_eq!(node_sent, total as f64);
    // count(smsnode_connected == 1): each of the process's three nodes, connected.
    let connected = wait_until(LONG, "three nodes' series in Prometheus", || async {
        query("count(smsnode_connected%20%3D%3D%201)")
            .await
            .filter(|v| *v == 3.0)
    })
    .await
    .unwrap();
    assert_eq!(connected, 3.0);
    // Every expression of the Grafana dashboard is valid PromQL for this Prometheus.
    for expr in dashboard_exprs() {
        let q = url_encode(&expr.replace("$__rate_interval", "1m"));
        let (code, body) = http_get(prom_addr, &format!("/api/v1/query?query={q}"))
            .await
            .unwrap();
        assert_eq!(code, 200, "dashboard query `{expr}` refused: {body}");
    }
    println!("prometheus: sum(smsmesh_messages_total{{outcome=\"sent\"}}) = {sent}");
    println!("prometheus: sum(smsnode_attempts_total{{outcome=\"sent\"}}) = {node_sent}");
}

/// Exit code of `program --health-check` with `args`.
async fn health(program: &str, args: &[String]) -> i32 {
    tokio::process::Command::new(bin(program))
        .args(args)
        .arg("--health-check")
        .stderr(Stdio::null())
        .status()
        .await
        .unwrap()
        .code()
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_follow_the_processes() {
    let mut coord = Command::new(bin("smscoord"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--in-memory",
            "--insecure-no-auth",
            "--plaintext",
        ])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = stdout_addrs(&mut coord, &["smscoord listening on "]).unwrap()[0];
    let mut coord = Proc { child: coord };
    let mut node = Command::new(bin("smsnode"))
        .args(["--coordinator", &format!("http://{addr}"), "--name", "hc"])
        .args([
            "--metrics-listen",
            "127.0.0.1:0",
            "--reconnect-max",
            "200ms",
        ])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = stdout_addrs(&mut node, &["smsnode metrics on "]).unwrap()[0];
    let _node = Proc { child: node };
    let coord_args = vec!["--listen".to_string(), addr.to_string()];
    let node_args = vec!["--metrics-listen".to_string(), metrics.to_string()];

    assert_eq!(health("smscoord", &coord_args).await, 0);
    wait_until(LONG, "the node to be healthy (connected)", || async {
        (health("smsnode", &node_args).await == 0).then_some(())
    })
    .await
    .unwrap();

    coord.kill9();
    assert_eq!(health("smscoord", &coord_args).await, 1, "coordinator gone");
    wait_until(
        LONG,
        "the node to be unhealthy (coordinator gone)",
        || async { (health("smsnode", &node_args).await == 1).then_some(()) },
    )
    .await
    .unwrap();
}

/// Every PromQL expression of the Grafana dashboard.
fn dashboard_exprs() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/dashboards/smsmesh.json"
    );
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 10, "the dashboard has its panels");
    exprs
}

/// Metric names (`smsmesh_*`, `smsnode_*`) an expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &expr[i..];
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts_word && (rest.starts_with("smsmesh_") || rest.starts_with("smsnode_")) {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.push(rest[..len].to_string());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

/// Series names in a Prometheus text body.
fn series_names(body: &str) -> std::collections::HashSet<String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_uses_only_metrics_that_exist() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let node = mesh.node(NodeSpec::new("dash"));
    let mut client = mesh.client().await.unwrap();
    // A running batch, so per-batch and per-node series exist.
    let id = client
        .submit_batch(synthetic(100, 2))
        .await
        .unwrap()
        .into_inner()
        .batch_id;
    wait_ended(&mut client, &id, LONG).await.unwrap();
    // The snapshot /metrics reads follows within a publication (20 ms).
    let metrics = mesh.metrics_addr;
    let coord = wait_until(LONG, "the node's attempts in /metrics", || async move {
        let (_, body) = http_get(metrics, "/metrics").await.ok()?;
        body.contains("smsmesh_attempts_total").then_some(body)
    })
    .await
    .unwrap();
    let mut names = series_names(&coord);
    let mut node_text = String::new();
    let registry = smsmesh_node::metrics::registry("dash", 10, node.stats.clone());
    prometheus_client::encoding::text::encode(&mut node_text, &registry).unwrap();
    names.extend(series_names(&node_text));
    // Series of a running batch appear only while it runs.
    names.insert("smsmesh_batch_pending_messages".into());
    for expr in dashboard_exprs() {
        for name in metric_names(&expr) {
            assert!(
                names.contains(&name),
                "{name} (in `{expr}`) is not exported; have {names:?}"
            );
        }
    }
}
