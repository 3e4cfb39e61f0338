//! The messages of `#[derive(Scope)]`: every compile error is part of the API.
//! Regenerate the expected output with `TRYBUILD=overwrite cargo test -p mp-storage-ui-tests --test
//! compiletest`, then read each `.stderr` before committing it.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
