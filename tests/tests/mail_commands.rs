//! Every command a notification tells the operator to run is one the real `steward` accepts
//! (issue 26: mails said `steward backup now --wait`, which clap refuses: `--wait` takes a
//! value).

use std::process::Command;

use steward_events::{samples, Event, Service};
use steward_notifier::message::describe;
use steward_system_tests::binary;

/// The backticked `steward ...` commands in `text`.
fn commands(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|c| c.starts_with("steward "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_command_a_notification_names_is_accepted_by_the_cli() {
    let mut checked = 0;
    for data in samples::all("gitea") {
        if !Service::Notifier.consumes().contains(&data.event_type()) {
            continue;
        }
        let item = describe(&Event::new("steward-test/host", data));
        for command in commands(&item.next) {
            // `--help` after the arguments: clap parses them all first, so a missing value or
            // an unknown subcommand or flag fails, and nothing is run.
            let args: Vec<&str> = command.split_whitespace().skip(1).collect();
            let out = Command::new(binary("steward"))
                .args(&args)
                .arg("--help")
                .output()
                .expect("run steward");
            assert!(
                out.status.success(),
                "{}: `{command}` is refused: {}",
                item.kind,
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} commands found: the extraction is broken");
}
