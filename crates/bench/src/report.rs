//! How results are shown: a line per scenario as it ends, and the Markdown
//! table of every result.

use crate::Scenario;

/// Prints a scenario's line: result and verdict.
pub(crate) fn report(scenario: &Scenario) {
    println!(
        "({}) {}: {} [target {}: {}]",
        scenario.id,
        scenario.title,
        scenario.result,
        scenario.target,
        if scenario.met { "met" } else { "NOT met" }
    );
    if let Some(m) = &scenario.machine {
        println!("    machine just before: {m}");
    }
}

pub(crate) fn fmt_shares(v: &[f64]) -> String {
    v.iter()
        .map(|s| format!("{:.1}%", s * 100.0))
        .collect::<Vec<_>>()
        .join("/")
}

pub(crate) fn markdown(results: &[Scenario]) -> String {
    let mut s = String::from(
        "| scenario | target | result | met | msg/s | p50 / p99 ms | coord CPU s per M | coord / node peak RSS MiB |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        for (i, run) in r.runs.iter().enumerate() {
            // A scenario of several runs: each row says which run it is.
            let same_setup = r.runs.iter().all(|x| x.nodes == run.nodes);
            let title = if r.runs.len() == 1 {
                r.title.clone()
            } else if same_setup {
                format!("{}: run {} of {}", r.title, i + 1, r.runs.len())
            } else {
                format!(
                    "{}: run with {} nodes in {} processes",
                    r.title, run.nodes, run.node_processes
                )
            };
            s.push_str(&format!(
                "| ({}) {} | {} | {} | {} | {:.0} | {:.2} / {:.2} | {:.2} | {:.0} / {:.0} |\n",
                r.id,
                title,
                r.target,
                r.result,
                if r.met { "yes" } else { "**no**" },
                run.msgs_per_sec,
                run.latency_p50_ms,
                run.latency_p99_ms,
                run.coordinator_cpu_s_per_million,
                run.coordinator_peak_rss_mib,
                run.node_peak_rss_mib,
            ));
        }
        for (i, u) in r.uploads.iter().enumerate() {
            s.push_str(&format!(
                "| ({}) {}: run {} of {} | {} | {} | {} | {:.0} | – | {:.2} | {:.0} / – |\n",
                r.id,
                r.title,
                i + 1,
                r.uploads.len(),
                r.target,
                r.result,
                if r.met { "yes" } else { "**no**" },
                u.recipients as f64 / u.all_sent_seconds,
                u.coordinator_cpu_s / (u.recipients as f64 / 1e6),
                u.coordinator_peak_rss_mib,
            ));
        }
    }
    let probes: Vec<String> = results
        .iter()
        .filter_map(|r| r.machine.map(|m| format!("({}) {m}", r.id)))
        .collect();
    if !probes.is_empty() {
        s.push_str(&format!(
            "\nThe machine just before each scenario (lower is faster): {}.\n",
            probes.join("; ")
        ));
    }
    s
}
