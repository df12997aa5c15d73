//! rstest with a database per test and per case: the fixture `pglite_harness::db` (feature
//! `rstest`) gives every `#[case]` a fresh in-memory PostgreSQL of its own, so cases that create
//! the same table and insert into it never see each other's rows, even when they run at once.
//!
//! It also shows a fixture of your own built on `PgliteDb::builder()` (here: the schema from
//! migrations), used the same way.
//!
//! ```text
//! cargo test --example rstest --all-features   # the point of this example: the cases below
//! cargo run --example rstest --all-features    # main: the same isolation, with three databases
//! ```

use pglite_harness::PgliteDb;

/// What every case does: create `visits`, insert one row, count the rows.
pub async fn insert_and_count(db: &PgliteDb, page: &str) -> Result<i64, sqlx::Error> {
    let pool = db.pool().await?;
    sqlx::query("CREATE TABLE visits (page text NOT NULL)")
        .execute(&pool)
        .await?;
    sqlx::query("INSERT INTO visits VALUES ($1)")
        .bind(page)
        .execute(&pool)
        .await?;
    sqlx::query_scalar("SELECT count(*) FROM visits")
        .fetch_one(&pool)
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Three databases at once, as three rstest cases would get.
    let (a, b, c) = tokio::try_join!(PgliteDb::start(), PgliteDb::start(), PgliteDb::start())?;
    for (db, page) in [(&a, "/home"), (&b, "/about"), (&c, "/contact")] {
        let count = insert_and_count(db, page).await?;
        println!(
            "{} (port {}): inserted {page}, count = {count}",
            db.url(),
            db.port()
        );
        assert_eq!(count, 1, "each database has only its own row");
    }
    println!("run `cargo test --example rstest --all-features` for the rstest cases");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use pglite_harness::{PgliteDb, db};
    use rstest::{fixture, rstest};

    use super::*;

    // Each case is its own test with its own database: all three create `visits` and count 1.
    #[rstest]
    #[case::home("/home")]
    #[case::about("/about")]
    #[case::contact("/contact")]
    #[tokio::test]
    async fn each_case_gets_its_own_database(#[future] db: PgliteDb, #[case] page: &str) {
        let db = db.await;
        assert_eq!(insert_and_count(&db, page).await.unwrap(), 1);
    }

    /// A fixture of your own: a database with the schema of `tests/migrations` applied (once per
    /// process; every test gets a clone) and the users of `tests/fixtures/users.sql`.
    #[fixture]
    async fn shop() -> PgliteDb {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        PgliteDb::builder()
            .migrations(root.join("tests/migrations"))
            .fixture(root.join("tests/fixtures/users.sql"))
            .start()
            .await
            .expect("the shop database starts")
    }

    // Cases on the custom fixture: each case's order goes into a database that has none yet.
    #[rstest]
    #[case::ada("ada@example.com", 1999)]
    #[case::grace("grace@example.com", 4200)]
    #[tokio::test]
    async fn each_order_is_the_only_one(#[future] shop: PgliteDb, #[case] email: &str, #[case] cents: i32) {
        let shop = shop.await;
        let pool = shop.pool().await.unwrap();
        sqlx::query("INSERT INTO orders (user_id, total_cents) SELECT id, $2 FROM users WHERE email = $1")
            .bind(email)
            .bind(cents)
            .execute(&pool)
            .await
            .unwrap();
        let orders: Vec<(String, i32)> =
            sqlx::query_as("SELECT u.email, o.total_cents FROM orders o JOIN users u ON u.id = o.user_id")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(orders, [(email.to_owned(), cents)]);
    }

    // `#[values]` makes the cross product: 2 × 2 = 4 tests, 4 databases.
    #[rstest]
    #[tokio::test]
    async fn a_negative_total_is_refused(
        #[future] shop: PgliteDb,
        #[values("ada@example.com", "grace@example.com")] email: &str,
        #[values(-1, -1000)] cents: i32,
    ) {
        let shop = shop.await; // Keep it alive: dropping a PgliteDb stops its server.
        let pool = shop.pool().await.unwrap();
        let err = sqlx::query(
            "INSERT INTO orders (user_id, total_cents) SELECT id, $2 FROM users WHERE email = $1",
        )
        .bind(email)
        .bind(cents)
        .execute(&pool)
        .await
        .unwrap_err();
        let code = err.as_database_error().and_then(|e| e.code()).unwrap_or_default();
        assert_eq!(code, "23514", "a check violation: {err}");
    }
}
