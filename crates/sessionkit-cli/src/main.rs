//! The `sessionkit` admin CLI.
fn main() {}
