//! 64 tests, each with its own database, run in parallel by `cargo test`: every one creates the
//! same table, inserts its own number and must see only that row.

use pglite_harness::{PgliteDb, pglite_test};
use sqlx::{Connection, PgConnection};

async fn alone_with(db: &PgliteDb, mine: i32) {
    let mut conn = PgConnection::connect(db.url()).await.unwrap();
    sqlx::query("CREATE TABLE shared_name (n int NOT NULL)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO shared_name VALUES ($1)")
        .bind(mine)
        .execute(&mut conn)
        .await
        .unwrap();
    // Give the other tests time to write into their tables before this one reads.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let rows: Vec<i32> = sqlx::query_scalar("SELECT n FROM shared_name")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, [mine], "test {mine} sees only its own row");
    conn.close().await.unwrap();
}

macro_rules! isolated_tests {
    ($($name:ident => $n:literal,)*) => {
        $(
            #[pglite_test]
            async fn $name(db: PgliteDb) {
                alone_with(&db, $n).await;
            }
        )*
    };
}

isolated_tests! {
    isolated_01 => 1,
    isolated_02 => 2,
    isolated_03 => 3,
    isolated_04 => 4,
    isolated_05 => 5,
    isolated_06 => 6,
    isolated_07 => 7,
    isolated_08 => 8,
    isolated_09 => 9,
    isolated_10 => 10,
    isolated_11 => 11,
    isolated_12 => 12,
    isolated_13 => 13,
    isolated_14 => 14,
    isolated_15 => 15,
    isolated_16 => 16,
    isolated_17 => 17,
    isolated_18 => 18,
    isolated_19 => 19,
    isolated_20 => 20,
    isolated_21 => 21,
    isolated_22 => 22,
    isolated_23 => 23,
    isolated_24 => 24,
    isolated_25 => 25,
    isolated_26 => 26,
    isolated_27 => 27,
    isolated_28 => 28,
    isolated_29 => 29,
    isolated_30 => 30,
    isolated_31 => 31,
    isolated_32 => 32,
    isolated_33 => 33,
    isolated_34 => 34,
    isolated_35 => 35,
    isolated_36 => 36,
    isolated_37 => 37,
    isolated_38 => 38,
    isolated_39 => 39,
    isolated_40 => 40,
    isolated_41 => 41,
    isolated_42 => 42,
    isolated_43 => 43,
    isolated_44 => 44,
    isolated_45 => 45,
    isolated_46 => 46,
    isolated_47 => 47,
    isolated_48 => 48,
    isolated_49 => 49,
    isolated_50 => 50,
    isolated_51 => 51,
    isolated_52 => 52,
    isolated_53 => 53,
    isolated_54 => 54,
    isolated_55 => 55,
    isolated_56 => 56,
    isolated_57 => 57,
    isolated_58 => 58,
    isolated_59 => 59,
    isolated_60 => 60,
    isolated_61 => 61,
    isolated_62 => 62,
    isolated_63 => 63,
    isolated_64 => 64,
}
