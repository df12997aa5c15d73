//! Migrations and SQL fixtures: every database starts with your schema (sqlx-style migrations,
//! `<version>_<description>.sql`, recorded in `_sqlx_migrations` as `sqlx migrate` does) and your
//! test data.
//!
//! In memory, migrations and fixtures run once per process into a template; every database after
//! that is a copy of it, made in milliseconds.
//!
//! This example uses the crate's `tests/migrations` (users, orders) and `tests/fixtures`.
//!
//! ```text
//! cargo run --example migrations --all-features
//! cargo test --example migrations --all-features
//! ```

use std::path::{Path, PathBuf};

use pglite_harness::PgliteDb;
use sqlx::PgPool;

/// A path in this crate. `#[pglite_test(migrations = "..")]` resolves relative paths this way
/// itself; the builder takes paths as they are (relative to the current directory).
fn in_crate(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Places an order for the user with this email; returns the order's id.
pub async fn place_order(pool: &PgPool, email: &str, total_cents: i32) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO orders (user_id, total_cents) SELECT id, $2 FROM users WHERE email = $1 RETURNING id",
    )
    .bind(email)
    .bind(total_cents)
    .fetch_one(pool)
    .await
}

/// How many orders the user with this email has (the schema's `order_count` function).
pub async fn orders_of(pool: &PgPool, email: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT order_count(id) FROM users WHERE email = $1")
        .bind(email)
        .fetch_one(pool)
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = PgliteDb::builder()
        .migrations(in_crate("tests/migrations"))
        .fixture(in_crate("tests/fixtures/users.sql"))
        .fixture(in_crate("tests/fixtures/orders.sql"))
        .start()
        .await?;
    println!("PostgreSQL at {} (started in {:?})", db.url(), db.start_time());
    let pool = db.pool().await?;

    let applied: Vec<(i64, String)> =
        sqlx::query_as("SELECT version, description FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await?;
    for (version, description) in applied {
        println!("migration {version} {description}: applied");
    }
    let users: Vec<String> = sqlx::query_scalar("SELECT email FROM users ORDER BY id")
        .fetch_all(&pool)
        .await?;
    println!("users from the fixture: {users:?}");

    println!("ada has {} order(s)", orders_of(&pool, "ada@example.com").await?);
    let id = place_order(&pool, "ada@example.com", 500).await?;
    println!(
        "placed order {id}; ada has {} order(s)",
        orders_of(&pool, "ada@example.com").await?
    );

    // A second database from the same recipe is a copy of the template: fixtures, no new order.
    let again = PgliteDb::builder()
        .migrations(in_crate("tests/migrations"))
        .fixture(in_crate("tests/fixtures/users.sql"))
        .fixture(in_crate("tests/fixtures/orders.sql"))
        .start()
        .await?;
    let pool = again.pool().await?;
    println!(
        "a second database started in {:?}; there ada has {} order(s)",
        again.start_time(),
        orders_of(&pool, "ada@example.com").await?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use pglite_harness::{PgliteDb, pglite_test};

    use super::*;

    #[pglite_test(migrations = "tests/migrations")]
    async fn the_schema_is_there_and_empty(db: PgliteDb) -> Result<(), Box<dyn std::error::Error>> {
        let pool = db.pool().await?;
        let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(&pool)
            .await?;
        assert_eq!(users, 0);
        // sqlx's own migrator agrees that everything is applied (checksums included).
        sqlx::migrate::Migrator::new(in_crate("tests/migrations"))
            .await?
            .run(&pool)
            .await?;
        Ok(())
    }

    #[pglite_test(
        migrations = "tests/migrations",
        fixtures("tests/fixtures/users.sql", "tests/fixtures/orders.sql")
    )]
    async fn orders_are_counted_per_user(db: PgliteDb) -> Result<(), Box<dyn std::error::Error>> {
        let pool = db.pool().await?;
        assert_eq!(orders_of(&pool, "ada@example.com").await?, 1);
        assert_eq!(orders_of(&pool, "grace@example.com").await?, 0);
        place_order(&pool, "grace@example.com", 4200).await?;
        assert_eq!(orders_of(&pool, "grace@example.com").await?, 1);
        Ok(())
    }

    // Same recipe as above, running at the same time: its own copy, without grace's new order.
    #[pglite_test(
        migrations = "tests/migrations",
        fixtures("tests/fixtures/users.sql", "tests/fixtures/orders.sql")
    )]
    async fn every_test_starts_from_the_fixtures(db: PgliteDb) -> Result<(), Box<dyn std::error::Error>> {
        let pool = db.pool().await?;
        let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(&pool)
            .await?;
        assert_eq!(orders, 1);
        Ok(())
    }

    #[pglite_test(migrations = "tests/migrations", fixtures("tests/fixtures/users.sql"))]
    async fn the_schema_enforces_its_constraints(db: PgliteDb) {
        let pool = db.pool().await.unwrap();
        let negative = place_order(&pool, "ada@example.com", -1).await.unwrap_err();
        assert_eq!(
            negative.as_database_error().unwrap().constraint(),
            Some("orders_total_cents_check")
        );
        let duplicate = sqlx::query("INSERT INTO users (email) VALUES ('ada@example.com')")
            .execute(&pool)
            .await
            .unwrap_err();
        assert_eq!(
            duplicate.as_database_error().unwrap().constraint(),
            Some("users_email_key")
        );
    }
}
