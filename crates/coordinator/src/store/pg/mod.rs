//! The store on PostgreSQL: the embedded store's tables as SQL tables
//! (`migrations/`, applied at start), holding the same stored bytes, written
//! only under the leadership the coordinator holds ([`crate::leader`]).
//!
//! Fencing: every write transaction first reads the leadership row under a
//! share lock and goes on only if it still carries this coordinator's epoch.
//! A takeover rewrites that row, so it waits for a write in progress to end,
//! and every write after it fails: two coordinators never both commit.

mod reads;
mod writes;

use std::sync::Mutex;

use postgres::{Client, NoTls};

use super::{Store, StoreError};

/// The schema's versioned migrations (`crates/coordinator/migrations`), built in.
mod embedded {
    #![allow(missing_docs)]
    refinery::embed_migrations!("migrations");
}

/// Key of the advisory lock held while migrations run (several coordinators
/// may start at once).
const MIGRATION_LOCK: i64 = 0x736d_736d_6573_6801;

/// A connected PostgreSQL store, writing under one leadership epoch.
pub struct Pg {
    /// The URL without its password, for messages.
    shown: String,
    /// The writer's connection (the store's writer thread is its only user).
    writer: Mutex<Conn>,
    /// Reads of folded batches.
    reader: Mutex<Conn>,
    /// The epoch this coordinator leads under.
    epoch: i64,
}

/// A connection that, when dropped on a Tokio runtime, closes on a thread of
/// its own: the sync client's close blocks on a runtime of its own, which
/// panics inside another (a coordinator that steps down drops its store
/// there).
struct Conn(Option<Client>);

impl std::ops::Deref for Conn {
    type Target = Client;

    fn deref(&self) -> &Client {
        self.0.as_ref().expect("a connection is open until dropped")
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        self.0.as_mut().expect("a connection is open until dropped")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(client) = self.0.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            std::thread::spawn(move || drop(client));
        }
    }
}

/// The URL with its password hidden, for logs and errors.
pub fn shown(url: &str) -> String {
    match url.parse::<postgres::Config>() {
        Ok(c) => {
            let hosts: Vec<String> = c
                .get_hosts()
                .iter()
                .map(|h| match h {
                    postgres::config::Host::Tcp(h) => h.clone(),
                    postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .collect();
            let port = c.get_ports().first().copied().unwrap_or(5432);
            format!(
                "postgres://{}@{}:{port}/{}",
                c.get_user().unwrap_or(""),
                hosts.join(","),
                c.get_dbname().unwrap_or("")
            )
        }
        Err(_) => "postgres://(unparsable URL)".into(),
    }
}

/// Parses a database URL, saying what is wrong with a bad one.
pub fn config(url: &str) -> Result<postgres::Config, String> {
    url.parse::<postgres::Config>()
        .map_err(|e| format!("bad database URL {}: {e}", shown(url)))
}

/// Opens a connection for the store, with the session settings it relies on:
/// a transaction left idle (its coordinator cut off from the database) ends
/// within `idle`, so its share lock on the leadership row cannot hold off a
/// takeover.
pub fn connect(url: &str, idle: std::time::Duration) -> Result<Client, StoreError> {
    let err = |e: postgres::Error| StoreError::Db {
        path: shown(url).into(),
        source: describe(&e).into(),
    };
    let mut config = config(url).map_err(|e| StoreError::Db {
        path: shown(url).into(),
        source: e.into(),
    })?;
    config.application_name("smscoord");
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(5));
    }
    let mut client = config.connect(NoTls).map_err(err)?;
    client
        .batch_execute(&format!(
            "SET idle_in_transaction_session_timeout = {}",
            idle.as_millis().max(1)
        ))
        .map_err(err)?;
    Ok(client)
}

/// Brings the database's schema up to date (versioned migrations, applied
/// once each; coordinators starting at once take turns).
pub fn migrate(url: &str) -> Result<(), StoreError> {
    let mut client = connect(url, std::time::Duration::from_secs(600))?;
    let err = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Db {
        path: shown(url).into(),
        source: e,
    };
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .map_err(|e| err(describe(&e).into()))?;
    let report = embedded::migrations::runner().run(&mut client);
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    let report = report.map_err(|e| err(e.into()))?;
    for m in report.applied_migrations() {
        tracing::info!(migration = %m, "database schema migrated");
    }
    Ok(())
}

impl Pg {
    /// Connects the store to `url`, writing under leadership `epoch`.
    pub fn connect(url: &str, epoch: i64, idle: std::time::Duration) -> Result<Pg, StoreError> {
        Ok(Pg {
            shown: shown(url),
            writer: Mutex::new(Conn(Some(connect(url, idle)?))),
            reader: Mutex::new(Conn(Some(connect(url, idle)?))),
            epoch,
        })
    }

    /// What the store is called in messages.
    pub fn describe(&self) -> String {
        self.shown.clone()
    }

    /// The epoch this store writes under.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }
}

/// The error of a failed database call, for the store at `store`'s path.
fn db_err(store: &Store, e: postgres::Error) -> StoreError {
    store.err(describe(&e))
}

/// What the database said (postgres::Error alone says only "db error").
pub fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => smsmesh::client::describe(e),
    }
}

/// Batch ids are stored as bigint with the same bits.
fn id(b: u64) -> i64 {
    b as i64
}

/// A stored bigint back as the batch id.
fn unid(b: i64) -> u64 {
    b as u64
}

/// Checks, under a share lock on the leadership row held to the end of
/// `txn`, that this coordinator still leads.
fn fence(store: &Store, txn: &mut postgres::Transaction<'_>, epoch: i64) -> Result<(), StoreError> {
    let row = txn
        .query_opt(
            "SELECT epoch, holder FROM smsmesh_leader WHERE id = 1 FOR SHARE",
            &[],
        )
        .map_err(|e| db_err(store, e))?;
    let (now, holder): (i64, String) = row.map_or((0, String::new()), |r| (r.get(0), r.get(1)));
    if now != epoch {
        return Err(StoreError::Deposed { epoch, now, holder });
    }
    Ok(())
}
