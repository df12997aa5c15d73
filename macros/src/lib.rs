//! Procedural macros for `pglite-harness` (the `#[pglite_test]` attribute arrives with the fixtures).
