//! The sessionkit demo app.
fn main() {}
