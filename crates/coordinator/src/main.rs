//! `smscoord`: runs the smsmesh coordinator.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use smsmesh_coordinator::auth::mint_hs256;

mod args;
use args::{Args, read_secret};

/// `--check-store`: opens the store without creating one, checks it, says what it holds.
fn check_store(dir: &std::path::Path, database: Option<&str>) -> ExitCode {
    use smsmesh_coordinator::store::{Store, StoreError, pg};
    let (what, loaded) = match database {
        // Reads only: no migration, no lead taken.
        Some(url) => (
            pg::shown(url),
            pg::Pg::connect(url, 0, Duration::from_secs(60))
                .map(Store::postgres)
                .and_then(|store| store.load()),
        ),
        None => {
            if !dir.join("smsmesh.redb").exists() {
                eprintln!("smscoord: no store in {}", dir.display());
                return ExitCode::from(69);
            }
            (
                dir.join("smsmesh.redb").display().to_string(),
                Store::open(dir, false).and_then(|store| store.load()),
            )
        }
    };
    match loaded {
        Ok(l) => {
            let messages: u64 = l.batches.iter().map(|b| u64::from(b.batch.total)).sum();
            let outcomes: usize = l.batches.iter().map(|b| b.outcomes().count()).sum();
            println!(
                "store {what} is sound: {} batches, {messages} messages, {outcomes} stored outcomes, {} node names, {} idempotency keys",
                l.batches.len(),
                l.nodes.len(),
                l.idempotency.len()
            );
            ExitCode::SUCCESS
        }
        Err(e @ StoreError::Corrupt { .. }) => {
            eprintln!("smscoord: DAMAGED: {e}");
            ExitCode::from(65) // EX_DATAERR
        }
        Err(e) => {
            eprintln!("smscoord: {e}");
            ExitCode::from(69)
        }
    }
}

/// A listener on `addr`, if one is given (`what` it serves, for the error).
async fn bind(
    addr: Option<SocketAddr>,
    what: &str,
) -> Result<Option<tokio::net::TcpListener>, String> {
    match addr {
        None => Ok(None),
        Some(addr) => tokio::net::TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|e| format!("cannot serve {what} on {addr}: {e}")),
    }
}

/// `--health-check`: asks the running coordinator's gRPC health service.
async fn health_check(args: &Args) -> ExitCode {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let mut addr = args.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let check = async {
        // Over TLS when the coordinator serves TLS: trusting --tls-ca, expecting --tls-domain.
        let (url, tls) = if args.tls_cert.is_some() {
            let tls = smsmesh::client::ClientTls::from_files(
                args.tls_ca.as_deref(),
                None,
                None,
                Some(args.tls_domain.clone()),
            )?;
            (format!("https://{addr}"), tls)
        } else {
            (format!("http://{addr}"), None)
        };
        let channel = smsmesh::client::endpoint(&url, tls.as_ref())?
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        // Readiness asks for the API itself, which only a leader serves.
        let service = if args.ready_check {
            smsmesh::pb::coordinator_server::SERVICE_NAME
        } else {
            ""
        };
        let r = client
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map_err(|s| s.message().to_string())?;
        Ok::<_, String>(r.into_inner().status)
    };
    match tokio::time::timeout(Duration::from_secs(5), check).await {
        Ok(Ok(s)) if s == ServingStatus::Serving as i32 => ExitCode::SUCCESS,
        Ok(Ok(s)) => {
            eprintln!("smscoord: unhealthy: status {s}");
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("smscoord: unhealthy: {addr}: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("smscoord: unhealthy: {addr} did not answer within 5s");
            ExitCode::FAILURE
        }
    }
}

/// `--mint-token TENANT`: prints an HS256 token signed with --jwt-secret-file.
fn mint(args: &Args, tenant: &str) -> ExitCode {
    let Some(file) = &args.jwt_secret_file else {
        eprintln!(
            "smscoord: --mint-token needs --jwt-secret-file (the secret tokens are signed with)"
        );
        return ExitCode::from(64);
    };
    let minted = read_secret(file, "JWT secret").and_then(|secret| {
        mint_hs256(
            secret.as_bytes(),
            &args.jwt_audience,
            args.jwt_issuer.as_deref(),
            tenant,
            &args.token_scope,
            args.token_ttl,
        )
    });
    match minted {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("smscoord: {e}");
            ExitCode::from(64)
        }
    }
}

/// mimalloc: a fifth of the coordinator's CPU under many small submits was
/// glibc's malloc and free (BENCHMARKS.md, "Issue 16: the allocator").
#[global_allocator]
static ALLOCATOR: smsmesh_alloc::MiMalloc = smsmesh_alloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.openapi {
        println!("{:#}", smsmesh_coordinator::rest::openapi::document());
        return ExitCode::SUCCESS;
    }
    if args.health_check || args.ready_check {
        return health_check(&args).await;
    }
    if args.check_store {
        let (dir, database) = (args.data_dir.clone(), args.database_url.clone());
        // The PostgreSQL client blocks: off the runtime's workers.
        return tokio::task::spawn_blocking(move || check_store(&dir, database.as_deref()))
            .await
            .unwrap_or(ExitCode::FAILURE);
    }
    if let Some(tenant) = &args.mint_token {
        return mint(&args, tenant);
    }
    let telemetry = smsmesh::telemetry::init("smscoord", "info", args.otlp_endpoint.as_deref());
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("smscoord: {e}");
            return ExitCode::from(64); // EX_USAGE
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("smscoord: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(69); // EX_UNAVAILABLE
        }
    };
    let (metrics, http) = match (
        bind(args.metrics_listen, "metrics").await,
        bind(args.http_listen, "HTTP").await,
    ) {
        (Ok(m), Ok(h)) => (m, h),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("smscoord: {e}");
            return ExitCode::from(69);
        }
    };
    // Scripts and tests read the addresses from here (useful with port 0).
    if let Ok(addr) = listener.local_addr() {
        println!("smscoord listening on {addr}");
    }
    if let Some(addr) = metrics.as_ref().and_then(|l| l.local_addr().ok()) {
        println!("smscoord metrics on {addr}");
    }
    if let Some(addr) = http.as_ref().and_then(|l| l.local_addr().ok()) {
        println!("smscoord http on {addr}");
    }
    let listeners = smsmesh_coordinator::Listeners {
        grpc: listener,
        metrics,
        http,
    };
    let result =
        smsmesh_coordinator::run_on(config, listeners, smsmesh::cli::shutdown_signal()).await;
    telemetry.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Each cause once (a store error's text already holds its source).
            eprintln!("smscoord: {}", smsmesh::client::describe(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
