//! Prints the event catalog as Markdown: `cargo run -q -p steward-events --example catalog > docs/events.md`.
//!
//! The text is [`steward_events::catalog::markdown`], which the test in `tests/decode.rs`
//! compares with the file byte for byte.

#![allow(clippy::print_stdout, missing_docs)]

fn main() {
    print!("{}", steward_events::catalog::markdown());
}
