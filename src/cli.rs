//! What smsmesh programs do the same way at start and stop: the runtime of
//! `--worker-threads N`, and a future that completes on Ctrl-C or SIGTERM.
//! (Logs and traces: [`crate::telemetry`].)

/// The runtime for `--worker-threads`: 1 runs everything on the calling
/// thread (for several processes sharing a few cores, where a second thread
/// would only hand work back and forth), 0 one worker per core, N that many.
pub fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match worker_threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
