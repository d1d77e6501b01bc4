//! Each service's data in its own SQLite database, shared by the service's instances (one
//! file, WAL mode, writers waiting on each other instead of failing). rusqlite calls block, so
//! they run on tokio's blocking pool, never on the workers that serve requests.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::Connection;

/// How long a write waits for another instance's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// One connection per process, used by one blocking task at a time.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl Db {
    /// Opens (creating) the database at `path`, or a private in-memory one without a path,
    /// and brings its schema up to `schema` (statements run once, at `user_version` 0).
    pub fn open(path: Option<&Path>, schema: &str) -> Result<Self, StoreError> {
        let mut conn = match path {
            Some(p) => Connection::open(p)?,
            None => Connection::open_in_memory()?,
        };
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // WAL: readers never block the writer, and two processes share the file safely.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // The version is read inside the write transaction: instances starting together take
        // turns, and only the first creates the schema. Dropped unfinished, it rolls back.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version == 0 {
            tx.execute_batch(schema)?;
            tx.pragma_update(None, "user_version", 1)?;
        }
        tx.commit()?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// The connection, for work at startup before the server takes requests.
    pub fn blocking(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` with the connection on the blocking pool.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        let out = tokio::task::spawn_blocking(move || {
            // A panic mid-call leaves SQLite consistent (the transaction rolls back).
            let mut c = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut c)
        })
        .await??;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_opening_together_create_the_schema_once() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("s.db");
        let schema = "CREATE TABLE t (k TEXT PRIMARY KEY)";
        let opened: Vec<_> = (0..8)
            .map(|_| {
                let p = path.clone();
                std::thread::spawn(move || Db::open(Some(&p), schema).map(|_| ()))
            })
            .collect();
        for o in opened {
            o.join().map_err(|_| "a thread panicked")??;
        }
        Ok(())
    }

    #[tokio::test]
    async fn two_handles_on_one_file_share_the_data() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("s.db");
        let schema = "CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)";
        let a = Db::open(Some(&path), schema)?;
        let b = Db::open(Some(&path), schema)?;
        a.call(|c| c.execute("INSERT INTO t VALUES ('x', 1)", []))
            .await?;
        let v: i64 = b
            .call(|c| c.query_row("SELECT v FROM t WHERE k = 'x'", [], |r| r.get(0)))
            .await?;
        assert_eq!(v, 1);
        let dup = b
            .call(|c| c.execute("INSERT INTO t VALUES ('x', 2)", []))
            .await;
        assert!(dup.is_err(), "the key is unique across instances");
        Ok(())
    }
}
