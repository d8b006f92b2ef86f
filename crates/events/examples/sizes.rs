//! Prints the encoded size in bytes of every sample event (`samples::all`), one `type bytes`
//! per line, as an agent on host `sim-01` would publish it: benches/scale.sh derives the
//! stream's growth per day of the scheduled flows from these and its measured per-message
//! overhead. `cargo run -q -p steward-events --example sizes`.

#![allow(clippy::print_stdout, missing_docs)]

use steward_events::{samples, Event};

fn main() {
    for data in samples::all("gitea") {
        let event = Event::new("steward-backup/vps-a", data).with_host(Some("sim-01".into()));
        match event.encode() {
            Ok(bytes) => println!("{} {}", event.event_type(), bytes.len()),
            Err(e) => eprintln!("{}: {e}", event.event_type()),
        }
    }
}
