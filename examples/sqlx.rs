//! sqlx against a real PostgreSQL 18, in-process: a small repository of users, and the tests for
//! it, each with a fresh database of its own.
//!
//! `PgliteDb::pool()` (feature `sqlx`) hands back a ready `sqlx::PgPool`; `db.url()` works with
//! `PgPool::connect` too, without the feature.
//!
//! ```text
//! cargo run --example sqlx --all-features     # main: start a database, write and read users
//! cargo test --example sqlx --all-features    # the tests below, one database each
//! ```

use pglite_harness::PgliteDb;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

/// A row of `users`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub name: String,
}

// With sqlx's `derive` feature this is `#[derive(sqlx::FromRow)]`.
impl<'r> sqlx::FromRow<'r, PgRow> for User {
    fn from_row(row: &'r PgRow) -> sqlx::Result<Self> {
        Ok(User {
            id: row.try_get("id")?,
            email: row.try_get("email")?,
            name: row.try_get("name")?,
        })
    }
}

/// The application's schema.
pub async fn create_schema(pool: &PgPool) -> sqlx::Result<()> {
    sqlx::query(
        "CREATE TABLE users (
            id bigserial PRIMARY KEY,
            email text NOT NULL UNIQUE,
            name text NOT NULL
        )",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Adds a user; returns its id.
pub async fn add_user(pool: &PgPool, email: &str, name: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar("INSERT INTO users (email, name) VALUES ($1, $2) RETURNING id")
        .bind(email)
        .bind(name)
        .fetch_one(pool)
        .await
}

/// The user with this email, if any.
pub async fn find_user(pool: &PgPool, email: &str) -> sqlx::Result<Option<User>> {
    sqlx::query_as("SELECT id, email, name FROM users WHERE email = $1")
        .bind(email)
        .fetch_optional(pool)
        .await
}

/// Every user, by id.
pub async fn all_users(pool: &PgPool) -> sqlx::Result<Vec<User>> {
    sqlx::query_as("SELECT id, email, name FROM users ORDER BY id")
        .fetch_all(pool)
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = PgliteDb::start().await?;
    println!(
        "PostgreSQL listening at {} (started in {:?})",
        db.url(),
        db.start_time()
    );

    let pool = db.pool().await?;
    let version: String = sqlx::query_scalar("SELECT version()").fetch_one(&pool).await?;
    println!("server: {version}");

    create_schema(&pool).await?;
    for (email, name) in [("ada@example.com", "Ada"), ("grace@example.com", "Grace")] {
        let id = add_user(&pool, email, name).await?;
        println!("added user {id}: {name} <{email}>");
    }
    let ada = find_user(&pool, "ada@example.com").await?;
    println!("found: {ada:?}");
    println!("all users: {:?}", all_users(&pool).await?);

    // A duplicate email is refused by the UNIQUE constraint, as PostgreSQL does.
    let err = add_user(&pool, "ada@example.com", "Ada again").await.unwrap_err();
    println!("duplicate refused: {err}");

    pool.close().await;
    // Dropping `db` stops the server and frees the memory.
    Ok(())
}

#[cfg(test)]
mod tests {
    use pglite_harness::{PgliteDb, pglite_test};

    use super::*;

    #[pglite_test]
    async fn adds_and_finds_a_user(db: PgliteDb) -> Result<(), Box<dyn std::error::Error>> {
        let pool = db.pool().await?;
        create_schema(&pool).await?;
        let id = add_user(&pool, "ada@example.com", "Ada").await?;
        let found = find_user(&pool, "ada@example.com").await?;
        assert_eq!(
            found,
            Some(User {
                id,
                email: "ada@example.com".into(),
                name: "Ada".into()
            })
        );
        assert_eq!(find_user(&pool, "nobody@example.com").await?, None);
        Ok(())
    }

    // Runs at the same time as the test above, with the same table name: each test has its own
    // database, so neither sees the other's rows.
    #[pglite_test]
    async fn starts_empty(db: PgliteDb) -> Result<(), Box<dyn std::error::Error>> {
        let pool = db.pool().await?;
        create_schema(&pool).await?;
        assert!(all_users(&pool).await?.is_empty());
        Ok(())
    }

    #[pglite_test]
    async fn a_duplicate_email_is_a_unique_violation(db: PgliteDb) {
        let pool = db.pool().await.unwrap();
        create_schema(&pool).await.unwrap();
        add_user(&pool, "ada@example.com", "Ada").await.unwrap();
        let err = add_user(&pool, "ada@example.com", "Ada again").await.unwrap_err();
        let db_err = err.as_database_error().expect("an error from PostgreSQL");
        assert_eq!(db_err.code().as_deref(), Some("23505"), "{db_err}");
        assert_eq!(db_err.constraint(), Some("users_email_key"));
    }

    #[pglite_test]
    async fn a_rolled_back_transaction_leaves_nothing(db: PgliteDb) -> Result<(), sqlx::Error> {
        let pool = db.pool().await?;
        create_schema(&pool).await?;
        let mut tx = pool.begin().await?;
        sqlx::query("INSERT INTO users (email, name) VALUES ('tmp@example.com', 'Tmp')")
            .execute(&mut *tx)
            .await?;
        tx.rollback().await?;
        assert!(all_users(&pool).await?.is_empty());
        Ok(())
    }
}
