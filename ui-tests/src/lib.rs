//! The compile errors of `#[derive(Scope)]` are part of the API: `tests/compiletest.rs` checks
//! each one against its expected message (`tests/ui/*.stderr`).
