use pglite_harness_macros::pglite_test;

struct PgliteDb;

#[pglite_test]
struct Fixture {
    db: PgliteDb,
}

fn main() {}
