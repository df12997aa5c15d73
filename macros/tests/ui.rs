//! Compile-fail tests: each mistake gives one error, pointing at the mistake.
//!
//! Regenerate the expected output with `TRYBUILD=overwrite cargo test -p pglite-harness-macros --test ui`
//! (then read every `.stderr`).

#[test]
fn ui() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
