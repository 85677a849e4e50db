//! The `agent-sandbox` command-line tool.
fn main() {}
