//! The sessionkit bench app.
fn main() {}
