//! A fresh PostgreSQL database per test, on the server `.ci/run` starts
//! (`SMSMESH_TEST_POSTGRES`, a URL whose user may create databases). Without
//! that server a test skips, saying so, unless `SMSMESH_REQUIRE_POSTGRES` is
//! set (as in CI): then it fails.

/// The test server's URL, if there is one (see the module doc).
pub fn postgres_url() -> Option<String> {
    match std::env::var("SMSMESH_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("SMSMESH_REQUIRE_POSTGRES").is_none(),
                "SMSMESH_REQUIRE_POSTGRES is set but SMSMESH_TEST_POSTGRES names no server (.ci/run starts one)"
            );
            eprintln!(
                "skipped: no PostgreSQL server for tests (set SMSMESH_TEST_POSTGRES, as .ci/run does)"
            );
            None
        }
    }
}

/// A new, empty database on the test server, as a URL; `None` (and the test
/// skips) without a server.
pub async fn database(name: &str) -> Option<String> {
    let url = postgres_url()?;
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL at {url}: {e}"));
    let connection = tokio::spawn(connection);
    let db = format!("smsmesh_{name}_{:08x}", rand_suffix());
    client
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap_or_else(|e| panic!("cannot create database {db}: {e}"));
    drop(client);
    let _ = connection.await;
    // Same server and user, the new database.
    let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
    Some(format!("{base}/{db}"))
}

/// Distinct enough for databases made by concurrent tests.
fn rand_suffix() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.subsec_nanos() ^ std::process::id().rotate_left(16)
}
