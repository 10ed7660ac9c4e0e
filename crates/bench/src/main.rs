//! `smsmesh-bench`: benchmarks the whole mesh. Each scenario starts a fresh
//! `smscoord` and `smsnode` processes on loopback (the release binaries next
//! to this one), submits one synthetic batch, follows it to its end, and
//! reports throughput, latency, coordinator CPU per million messages and peak
//! RSS. Results go to a JSON file and a Markdown table.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use serde::Serialize;
mod callbacks;
mod failover;
mod history;
mod http_provider;
mod measure;
mod mesh;
mod priority;
mod probe;
mod report;
mod rest;
mod small;
mod smpp;
mod upload;

use measure::run;
pub(crate) use measure::{median, run_on, usage};
use report::{fmt_shares, markdown, report};

/// Runs the benchmark scenarios (a) to (l) and writes the results.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Scenarios to run (a to o; (l) needs SMSMESH_TEST_POSTGRES, a PostgreSQL server).
    #[arg(long, value_delimiter = ',', default_value = "a,b,c,d,e,f")]
    scenarios: Vec<String>,
    /// Scale every batch size by this factor (e.g. 0.1 for a quick run).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Machine-readable results.
    #[arg(long, default_value = "bench-results.json")]
    json: PathBuf,
    /// Markdown table of the results.
    #[arg(long, default_value = "bench-results.md")]
    markdown: PathBuf,
    /// Runs of (a) and (b) each, interleaved (a, b, a, b, …) when both are
    /// asked for: their verdicts use the medians, since a shared VM's speed
    /// drifts from one run to the next.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    repeat: u32,
}

/// Scenario (f) runs its nodes in this many `smsnode` processes (`--instances`:
/// one connection and one group stream per process), as on this many hosts: 200
/// processes on 2 cores would measure the scheduler's cost of 200 processes,
/// not the mesh.
const F_PROCESSES: usize = 4;

/// How the mesh of one run is made. Nodes run on smsnode's default of one
/// runtime thread.
#[derive(Clone, Debug)]
pub(crate) struct Setup {
    messages: u64,
    durable: bool,
    /// (concurrency, mean latency) of each node.
    nodes: Vec<(u32, Duration)>,
    /// Nodes per `smsnode` process (`--instances`): 1 for a process each.
    per_process: usize,
}

impl Setup {
    /// `messages` to a durable coordinator and 4 node processes of
    /// concurrency 1000 at zero latency.
    fn durable_four(messages: u64) -> Setup {
        Setup {
            messages,
            durable: true,
            nodes: vec![(1000, Duration::ZERO); 4],
            per_process: 1,
        }
    }
}

/// What one run measured.
#[derive(Debug, Serialize, Default)]
pub(crate) struct Run {
    messages: u64,
    nodes: usize,
    /// `smsnode` processes the nodes ran in.
    node_processes: usize,
    durable: bool,
    seconds: f64,
    msgs_per_sec: f64,
    latency_p50_ms: f64,
    latency_p95_ms: f64,
    latency_p99_ms: f64,
    coordinator_cpu_s_per_million: f64,
    coordinator_peak_rss_mib: f64,
    node_peak_rss_mib: f64,
    sent: u64,
    failed: u64,
    /// Each node's share of the messages, in node order.
    shares: Vec<f64>,
    /// Each node's measured mean gateway latency (ms), in node order.
    node_latency_ms: Vec<f64>,
    /// Messages per second between 10% and 90% of the batch (no ramp-up, no tail).
    steady_msgs_per_sec: f64,
    /// The store of a durable run, when not the embedded one ("postgres").
    #[serde(skip_serializing_if = "String::is_empty")]
    store: String,
}

/// One scenario's result, with its verdict against the target.
#[derive(Debug, Serialize, Default)]
pub(crate) struct Scenario {
    id: String,
    title: String,
    target: String,
    result: String,
    met: bool,
    runs: Vec<Run>,
    /// The runs of an upload scenario.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    uploads: Vec<upload::Upload>,
    /// The run of the history scenario.
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<history::History>,
    /// The runs of the SMPP scenario.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    smpp: Vec<smpp::SmppRun>,
    /// What the classes-of-traffic scenario measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<priority::Priority>,
    /// What the standby-coordinator scenario measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    failover: Option<failover::Standby>,
    /// What the callbacks scenario measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    callbacks: Option<callbacks::Callbacks>,
    /// How fast the machine was just before the scenario ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    machine: Option<probe::Probe>,
}

/// mimalloc rather than glibc's malloc: many small allocations per message,
/// on many threads (BENCHMARKS.md, "Issue 16: the allocator").
#[global_allocator]
static ALLOCATOR: smsmesh_alloc::MiMalloc = smsmesh_alloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .to_path_buf();
    for b in ["smscoord", "smsnode"] {
        if !bin.join(b).exists() {
            bail!(
                "{} not found next to smsmesh-bench: build with `cargo build --release --workspace --bins`",
                b
            );
        }
    }
    let scale = |n: u64| ((n as f64 * args.scale) as u64).max(1000);
    let zero = Duration::ZERO;
    let mut results = Vec::new();
    for s in &args.scenarios {
        let paired = s == "a" || s == "b";
        if paired
            && results
                .iter()
                .any(|r: &Scenario| r.id == "a" || r.id == "b")
        {
            continue; // run with the other, interleaved
        }
        let machine = Some(probe::measure().await?);
        let mut scenario = match s.as_str() {
            "a" | "b" => {
                let want = |id: &str| args.scenarios.iter().any(|x| x == id);
                let (mut durable, mut memory) = (Vec::new(), Vec::new());
                for _ in 0..args.repeat {
                    for (id, runs) in [("a", &mut durable), ("b", &mut memory)] {
                        if want(id) {
                            let setup = Setup {
                                messages: scale(1_000_000),
                                durable: id == "a",
                                nodes: vec![(1000, zero); 4],
                                per_process: 1,
                            };
                            runs.push(run(&bin, &setup).await?);
                        }
                    }
                }
                let rates = |runs: &[Run]| runs.iter().map(|r| r.msgs_per_sec).collect::<Vec<_>>();
                let listed = |v: &[f64]| {
                    v.iter()
                        .map(|x| format!("{x:.0}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                // Each durable run against the in-memory run next to it.
                let costs: Vec<f64> = durable
                    .iter()
                    .zip(&memory)
                    .map(|(a, b)| 100.0 * (1.0 - a.msgs_per_sec / b.msgs_per_sec))
                    .collect();
                if !durable.is_empty() {
                    let median_a = median(&rates(&durable));
                    let scenario = Scenario {
                        id: "a".into(),
                        title: "1M messages, 4 nodes, zero latency, durable".into(),
                        target: "≥ 1,000,000 msg/s (median of the runs)".into(),
                        result: format!(
                            "median {median_a:.0} msg/s of {} runs ({})",
                            durable.len(),
                            listed(&rates(&durable))
                        ),
                        met: median_a >= 1_000_000.0,
                        runs: durable,
                        uploads: Vec::new(),
                        history: None,
                        smpp: Vec::new(),
                        priority: None,
                        failover: None,
                        callbacks: None,
                        machine,
                    };
                    report(&scenario);
                    results.push(scenario);
                }
                if !memory.is_empty() {
                    let median_b = median(&rates(&memory));
                    let mut result = format!(
                        "median {median_b:.0} msg/s of {} runs ({})",
                        memory.len(),
                        listed(&rates(&memory))
                    );
                    if costs.is_empty() {
                        result += "; run (a) too to judge what durability costs";
                    } else {
                        result += &format!(
                            "; durability costs median {:.1}% ({})",
                            median(&costs),
                            costs
                                .iter()
                                .map(|c| format!("{c:.1}%"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                    }
                    let scenario = Scenario {
                        id: "b".into(),
                        title: "1M messages, 4 nodes, zero latency, in memory".into(),
                        target: "what durability costs, (a) against (b) run by run: ≤ 20% (median)"
                            .into(),
                        result,
                        met: !costs.is_empty() && median(&costs) <= 20.0,
                        runs: memory,
                        uploads: Vec::new(),
                        history: None,
                        smpp: Vec::new(),
                        priority: None,
                        failover: None,
                        callbacks: None,
                        machine,
                    };
                    report(&scenario);
                    results.push(scenario);
                }
                continue;
            }
            "c" => {
                let run = run(
                    &bin,
                    &Setup {
                        messages: scale(14_000_000),
                        durable: true,
                        nodes: vec![(1000, zero); 4],
                        per_process: 1,
                    },
                )
                .await?;
                let met = run.seconds <= 20.0 && run.coordinator_peak_rss_mib <= 512.0;
                Scenario {
                    id: s.clone(),
                    title: "14M messages, 4 nodes, zero latency, durable".into(),
                    target: "≤ 20 s, coordinator peak RSS ≤ 512 MiB".into(),
                    result: format!(
                        "{:.1} s, coordinator {:.0} MiB",
                        run.seconds, run.coordinator_peak_rss_mib
                    ),
                    met,
                    runs: vec![run],
                    uploads: Vec::new(),
                    history: None,
                    smpp: Vec::new(),
                    priority: None,
                    failover: None,
                    callbacks: None,
                    machine: None,
                }
            }
            "d" => {
                let latency = Duration::from_millis(100);
                let run = run(
                    &bin,
                    &Setup {
                        messages: scale(300_000),
                        durable: true,
                        nodes: vec![(1000, latency); 3],
                        per_process: 1,
                    },
                )
                .await?;
                let ideal = 3.0 * 1000.0 / latency.as_secs_f64();
                let eff = run.msgs_per_sec / ideal;
                let steady = run.steady_msgs_per_sec / ideal;
                let mean_ms = run.node_latency_ms.iter().sum::<f64>()
                    / run.node_latency_ms.len().max(1) as f64;
                Scenario {
                    id: s.clone(),
                    title: "flow control: 3 nodes × concurrency 1000 × 100 ms".into(),
                    target: "≥ 97% of 30,000 msg/s (steady state; end to end also shown)".into(),
                    result: format!(
                        "end to end {:.0} msg/s = {:.1}%; steady state (10%–90%) {:.0} msg/s = {:.1}% (measured mean latency {mean_ms:.1} ms)",
                        run.msgs_per_sec,
                        eff * 100.0,
                        run.steady_msgs_per_sec,
                        steady * 100.0
                    ),
                    met: steady >= 0.97,
                    runs: vec![run],
                    uploads: Vec::new(),
                    history: None,
                    smpp: Vec::new(),
                    priority: None,
                    failover: None,
                    callbacks: None,
                    machine: None,
                }
            }
            "e" => {
                let fast = Duration::from_millis(10);
                let nodes = vec![(100, fast), (100, fast), (100, fast), (100, fast * 10)];
                let nominal: Vec<f64> = nodes
                    .iter()
                    .map(|(c, l)| f64::from(*c) / l.as_secs_f64())
                    .collect();
                let nominal_sum: f64 = nominal.iter().sum();
                let run = run(
                    &bin,
                    &Setup {
                        messages: scale(200_000),
                        durable: true,
                        nodes: nodes.clone(),
                        per_process: 1,
                    },
                )
                .await?;
                // A node's speed: its concurrency over the mean latency it really had.
                let speeds: Vec<f64> = nodes
                    .iter()
                    .zip(&run.node_latency_ms)
                    .map(|((c, _), ms)| f64::from(*c) / (ms / 1000.0))
                    .collect();
                let sum: f64 = speeds.iter().sum();
                let worst = run
                    .shares
                    .iter()
                    .zip(&speeds)
                    .map(|(share, speed)| ((share - speed / sum) / (speed / sum)).abs())
                    .fold(0.0, f64::max);
                Scenario {
                    id: s.clone(),
                    title: "one node at a tenth of the others' speed".into(),
                    target: "each share within 5% of its speed share".into(),
                    result: format!(
                        "shares {} vs measured speed {} (nominal {}); worst off by {:.1}%",
                        fmt_shares(&run.shares),
                        fmt_shares(&speeds.iter().map(|s| s / sum).collect::<Vec<_>>()),
                        fmt_shares(&nominal.iter().map(|s| s / nominal_sum).collect::<Vec<_>>()),
                        worst * 100.0
                    ),
                    met: worst <= 0.05,
                    runs: vec![run],
                    uploads: Vec::new(),
                    history: None,
                    smpp: Vec::new(),
                    priority: None,
                    failover: None,
                    callbacks: None,
                    machine: None,
                }
            }
            "f" => {
                let latency = Duration::from_millis(20);
                let small = run(
                    &bin,
                    &Setup {
                        messages: scale(100_000),
                        durable: true,
                        nodes: vec![(10, latency); 20],
                        per_process: 20 / F_PROCESSES,
                    },
                )
                .await?;
                let large = run(
                    &bin,
                    &Setup {
                        messages: scale(500_000),
                        durable: true,
                        nodes: vec![(10, latency); 200],
                        per_process: 200 / F_PROCESSES,
                    },
                )
                .await?;
                // Per send slot (a node's concurrency): the credit a node grants beyond
                // it, its prefetch, is sized by the node itself and not counted.
                let per_slot = |r: &Run| r.msgs_per_sec / (r.nodes as f64 * 10.0);
                let ratio = per_slot(&large) / per_slot(&small);
                Scenario {
                    id: s.clone(),
                    title: "200 nodes of concurrency 10 (20 ms) vs 20 such nodes".into(),
                    target: "no loss of throughput per credit (per send slot) as nodes grow: ≥ 95% of the 20-node figure".into(),
                    result: format!(
                        "{:.1} msg/s per send slot with 20 nodes, {:.1} with 200 ({:.0}%; ideal 50)",
                        per_slot(&small),
                        per_slot(&large),
                        ratio * 100.0
                    ),
                    met: ratio >= 0.95,
                    runs: vec![small, large],
                    uploads: Vec::new(),
                    history: None,
                    smpp: Vec::new(),
                    priority: None,
                    failover: None,
                    callbacks: None,
                    machine: None,
                }
            }
            "g" => {
                let callers = 64;
                let one = small::run(&bin, callers, 1, scale(200_000)).await?;
                let four = small::run(&bin, callers, 4, scale(200_000)).await?;
                let (r, r4) = (&one.run, &four.run);
                Scenario {
                    id: s.clone(),
                    title: format!("one-message batches from {callers} concurrent callers, durable, nodes of 1 runtime thread: of one tenant, then of 4"),
                    target: "≥ 20,000 batches/s and SubmitBatch p99 ≤ 25 ms with one tenant, at least half of that with 4; every message sent".into(),
                    result: format!(
                        "one tenant {:.0} batches/s ({} in {:.1} s), p50 {:.1} ms, p99 {:.1} ms, all sent after {:.1} s; 4 tenants {:.0} batches/s, p50 {:.1} ms, p99 {:.1} ms, all sent after {:.1} s",
                        r.msgs_per_sec, r.messages, r.seconds, r.latency_p50_ms, r.latency_p99_ms, one.all_sent_seconds,
                        r4.msgs_per_sec, r4.latency_p50_ms, r4.latency_p99_ms, four.all_sent_seconds
                    ),
                    met: r.msgs_per_sec >= 20_000.0
                        && r.latency_p99_ms <= 25.0
                        && r4.msgs_per_sec >= 10_000.0,
                    runs: vec![one.run, four.run],
                    uploads: Vec::new(),
                    history: None,
                    smpp: Vec::new(),
                    priority: None,
                    failover: None,
                    callbacks: None,
                    machine: None,
                }
            }
            "h" => {
                let n = ((14_000_000.0 * args.scale) as u64).max(1000);
                upload::scenario(&bin, n, args.repeat).await?
            }
            "i" => history::scenario(&bin, scale(1_000_000)).await?,
            "j" => smpp::scenario(&bin, scale(1_000_000)).await?,
            "k" => {
                priority::scenario(&bin, scale(1_000_000), scale(10_000_000), args.repeat).await?
            }
            "l" => failover::scenario(&bin, scale(1_000_000), args.repeat).await?,
            "m" => rest::scenario(&bin, scale(100_000), args.repeat).await?,
            "n" => http_provider::scenario(&bin, scale(200_000), args.repeat).await?,
            "o" => {
                let outage = Duration::from_secs_f64((60.0 * args.scale).clamp(5.0, 60.0));
                callbacks::scenario(&bin, scale(1_000_000), outage).await?
            }
            other => bail!("unknown scenario {other:?} (a to o)"),
        };
        scenario.machine = machine;
        report(&scenario);
        results.push(scenario);
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&results)?)?;
    std::fs::write(&args.markdown, markdown(&results))?;
    println!(
        "wrote {} and {}",
        args.json.display(),
        args.markdown.display()
    );
    Ok(())
}
