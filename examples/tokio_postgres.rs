//! tokio-postgres against a real PostgreSQL 18, in-process: a todo list with prepared statements
//! and a transaction, and the tests for it, each with a fresh database of its own.
//!
//! `PgliteDb::client()` (feature `tokio-postgres`) hands back a connected `tokio_postgres::Client`
//! whose connection task is already spawned; `tokio_postgres::connect(db.url(), NoTls)` works
//! too, without the feature.
//!
//! ```text
//! cargo run --example tokio_postgres --all-features
//! cargo test --example tokio_postgres --all-features
//! ```

use pglite_harness::PgliteDb;
use tokio_postgres::{Client, Error};

/// The application's schema.
pub async fn create_schema(client: &Client) -> Result<(), Error> {
    client
        .batch_execute(
            "CREATE TABLE todos (
                id serial PRIMARY KEY,
                title text NOT NULL,
                done boolean NOT NULL DEFAULT false
            )",
        )
        .await
}

/// Adds a todo; returns its id.
pub async fn add_todo(client: &Client, title: &str) -> Result<i32, Error> {
    let row = client
        .query_one("INSERT INTO todos (title) VALUES ($1) RETURNING id", &[&title])
        .await?;
    Ok(row.get(0))
}

/// Marks todos done, all or none (one transaction); returns how many changed.
pub async fn complete(client: &mut Client, ids: &[i32]) -> Result<u64, Error> {
    let tx = client.transaction().await?;
    let statement = tx
        .prepare("UPDATE todos SET done = true WHERE id = $1 AND NOT done")
        .await?;
    let mut changed = 0;
    for id in ids {
        changed += tx.execute(&statement, &[id]).await?;
    }
    tx.commit().await?;
    Ok(changed)
}

/// The titles of the todos not done yet, by id.
pub async fn open_todos(client: &Client) -> Result<Vec<String>, Error> {
    let rows = client
        .query("SELECT title FROM todos WHERE NOT done ORDER BY id", &[])
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = PgliteDb::start().await?;
    println!("PostgreSQL listening at {}", db.url());
    let mut client = db.client().await?;

    create_schema(&client).await?;
    let mut ids = Vec::new();
    for title in ["write the examples", "run them", "commit"] {
        let id = add_todo(&client, title).await?;
        println!("todo {id}: {title}");
        ids.push(id);
    }
    let changed = complete(&mut client, &ids[..2]).await?;
    println!("completed {changed} todos in one transaction");
    println!("still open: {:?}", open_todos(&client).await?);

    // Server-side errors come back with their SQLSTATE.
    let err = client
        .execute("SELECT * FROM no_such_table", &[])
        .await
        .unwrap_err();
    if let Some(db_err) = err.as_db_error() {
        println!("error {}: {}", db_err.code().code(), db_err.message());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use pglite_harness::{PgliteDb, pglite_test};

    use super::*;

    #[pglite_test]
    async fn completes_todos(db: PgliteDb) -> Result<(), Box<dyn std::error::Error>> {
        let mut client = db.client().await?;
        create_schema(&client).await?;
        let first = add_todo(&client, "one").await?;
        add_todo(&client, "two").await?;
        assert_eq!(complete(&mut client, &[first]).await?, 1);
        assert_eq!(complete(&mut client, &[first]).await?, 0, "already done");
        assert_eq!(open_todos(&client).await?, ["two"]);
        Ok(())
    }

    #[pglite_test]
    async fn a_failed_transaction_changes_nothing(db: PgliteDb) {
        let mut client = db.client().await.unwrap();
        create_schema(&client).await.unwrap();
        let id = add_todo(&client, "one").await.unwrap();
        // The second id is not an int4: the whole transaction is rolled back.
        let tx = client.transaction().await.unwrap();
        tx.execute("UPDATE todos SET done = true WHERE id = $1", &[&id])
            .await
            .unwrap();
        let err = tx
            .batch_execute("UPDATE todos SET done = true WHERE id = 'x'")
            .await
            .unwrap_err();
        assert_eq!(err.code().unwrap().code(), "22P02", "{err}");
        drop(tx); // Dropping an uncommitted transaction rolls it back.
        assert_eq!(open_todos(&client).await.unwrap(), ["one"]);
    }

    // A synchronous test (plain `fn`) runs on the test thread: drive the async client with a
    // runtime of its own.
    #[pglite_test]
    fn a_sync_test_brings_its_own_runtime(db: PgliteDb) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let client = db.client().await.unwrap();
            create_schema(&client).await.unwrap();
            assert!(open_todos(&client).await.unwrap().is_empty());
        });
    }
}
