//! `smsmesh-smsc`: the test SMSC on a TCP port, printing what it did every
//! few seconds. See the crate's library for what it answers.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use clap::Parser;

/// A test SMSC speaking SMPP 3.4 (for tests, demos and benchmarks; never for real traffic).
#[derive(Parser, Debug)]
#[command(name = "smsmesh-smsc", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "SMSMESH_SMSC_LISTEN", default_value = "127.0.0.1:2775")]
    listen: String,
    /// Runtime threads: 1 to run on one thread (a benchmark's SMSC beside
    /// the nodes it serves), 0 for one per core.
    #[arg(long, env = "SMSMESH_SMSC_WORKER_THREADS", default_value_t = 0)]
    worker_threads: usize,
    #[command(flatten)]
    config: smsmesh_smsc::SmscConfig,
}

/// mimalloc, as the coordinator and the nodes: a benchmark's SMSC should not
/// spend its CPU in glibc's malloc and free (BENCHMARKS.md, "Issue 16: the allocator").
#[global_allocator]
static ALLOCATOR: smsmesh_alloc::MiMalloc = smsmesh_alloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    smsmesh::cli::runtime(args.worker_threads)?.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let _telemetry = smsmesh::telemetry::init("smsmesh-smsc", "info", None);
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!(listen = %addr, "test SMSC listening");
    // For scripts and benchmarks that listen on port 0.
    println!("smsmesh-smsc listening on {addr}");
    let stats = Arc::new(smsmesh_smsc::SmscStats::default());
    let report = stats.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            every.tick().await;
            let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            tracing::info!(
                binds = n(&report.binds),
                submits = n(&report.submits),
                accepted = n(&report.accepted),
                throttled = n(&report.throttled),
                receipts = n(&report.receipts),
                "test SMSC"
            );
        }
    });
    tokio::select! {
        () = smsmesh_smsc::serve(listener, args.config, stats) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
