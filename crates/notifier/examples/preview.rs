//! Prints the mail every notified event type produces, for reviewing the templates:
//! `cargo run -p steward-notifier --example preview [html]`.

#![allow(clippy::print_stdout)]

use steward_events::{Event, Service};
use steward_notifier::message::{describe, Templates};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let html = std::env::args().nth(1).is_some_and(|a| a == "html");
    let templates = Templates::builtin()?;
    for data in steward_events::samples::all("gitea") {
        if !Service::Notifier.consumes().contains(&data.event_type()) {
            continue;
        }
        let event = Event::new("steward-updater/gitea-host", data);
        let m = templates.render(vec![describe(&event)])?;
        println!("Subject: {}\n", m.subject);
        println!("{}\n==========", if html { &m.html } else { &m.text });
    }
    Ok(())
}
