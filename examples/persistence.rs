//! Data that outlives the database process: a file-backed `PgliteDb` keeps its data in a
//! directory, across `db.restart()` and across runs of the program.
//!
//! - `PgliteDb::builder().data_dir(dir)`: your directory, created from the template on first use
//!   and kept afterwards.
//! - `PgliteDb::builder().temp_dir()` / `#[pglite_test(temp_dir)]`: a temporary directory,
//!   removed when the `PgliteDb` is dropped, for tests of restart and recovery.
//! - In memory (the default), the data lives as long as the `PgliteDb`: `restart()` keeps it
//!   (the backend's memory is the data), and the next `PgliteDb` starts from the template.
//!
//! ```text
//! cargo run --example persistence --all-features            # run it twice: the count goes up
//! cargo run --example persistence --all-features -- ./mydb  # another data directory
//! cargo test --example persistence --all-features
//! ```

use std::path::PathBuf;

use pglite_harness::PgliteDb;
use sqlx::PgPool;

/// Records one run; returns how many runs this database has seen.
pub async fn record_run(pool: &PgPool, note: &str) -> sqlx::Result<i64> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS runs (id serial PRIMARY KEY, at timestamptz DEFAULT now(), note text)",
    )
    .execute(pool)
    .await?;
    sqlx::query("INSERT INTO runs (note) VALUES ($1)")
        .bind(note)
        .execute(pool)
        .await?;
    sqlx::query_scalar("SELECT count(*) FROM runs")
        .fetch_one(pool)
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("pglite-harness-persistence-example"));
    let mut db = PgliteDb::builder().data_dir(&dir).start().await?;
    println!("data directory {} at {}", dir.display(), db.url());

    let pool = db.pool().await?;
    let runs = record_run(&pool, "program start").await?;
    println!("this directory has seen {runs} run(s) of this program");
    pool.close().await;

    // A clean stop (shutdown checkpoint) and a start on the same data and the same port.
    db.restart().await?;
    let pool = db.pool().await?;
    let runs = record_run(&pool, "after restart").await?;
    println!("after db.restart(): {runs} rows, nothing lost");
    pool.close().await;

    // Dropping stops the database cleanly; the directory stays for the next run.
    drop(db);
    println!(
        "run me again and the count goes on from {runs}; delete {} to start over",
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use pglite_harness::{PgliteDb, pglite_test};

    use super::*;

    #[pglite_test(temp_dir)]
    async fn rows_survive_a_restart(mut db: PgliteDb) -> Result<(), Box<dyn std::error::Error>> {
        let pool = db.pool().await?;
        assert_eq!(record_run(&pool, "first").await?, 1);
        pool.close().await;

        db.restart().await?;
        let pool = db.pool().await?;
        assert_eq!(record_run(&pool, "second").await?, 2);
        let notes: Vec<String> = sqlx::query_scalar("SELECT note FROM runs ORDER BY id")
            .fetch_all(&pool)
            .await?;
        assert_eq!(notes, ["first", "second"]);
        Ok(())
    }

    // Two `PgliteDb`s on one directory, one after the other: what two runs of `main` do.
    #[tokio::test]
    async fn a_data_dir_is_found_again_by_the_next_database() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        for expected in 1..=3 {
            let db = PgliteDb::builder().data_dir(dir.path()).start().await?;
            assert_eq!(db.data_dir(), Some(dir.path()));
            let pool = db.pool().await?;
            assert_eq!(record_run(&pool, "run").await?, expected);
            pool.close().await;
        }
        Ok(())
    }

    // For contrast: in memory, the data lives as long as the `PgliteDb`.
    #[pglite_test]
    async fn in_memory_data_lives_as_long_as_the_db(
        mut db: PgliteDb,
    ) -> Result<(), Box<dyn std::error::Error>> {
        assert_eq!(db.data_dir(), None);
        let pool = db.pool().await?;
        assert_eq!(record_run(&pool, "first").await?, 1);
        pool.close().await;

        db.restart().await?;
        let pool = db.pool().await?;
        assert_eq!(
            record_run(&pool, "after restart").await?,
            2,
            "a restart keeps the data"
        );
        pool.close().await;
        drop(db);

        let fresh = PgliteDb::start().await?;
        let pool = fresh.pool().await?;
        assert_eq!(
            record_run(&pool, "new database").await?,
            1,
            "a new database starts over"
        );
        Ok(())
    }
}
