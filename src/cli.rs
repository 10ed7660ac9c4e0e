//! What every smsmesh program does the same way at stop: a future that
//! completes on Ctrl-C or SIGTERM. (Logs and traces: [`crate::telemetry`].)

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
