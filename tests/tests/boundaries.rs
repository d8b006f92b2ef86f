//! The workspace's layering (`docs/architecture.md`, "Code map"), held by a test instead of by
//! habit, as rust-analyzer's tidy tests do: it reads `cargo metadata` and names every crate
//! that crosses a boundary, and why that boundary exists.
//!
//! Exceptions are listed here with their reason; one that no longer applies is an error too,
//! so the list only shrinks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The services: they share only library crates, never each other's.
const SERVICES: [&str; 6] = [
    "steward-watcher",
    "steward-updater",
    "steward-backup",
    "steward-health",
    "steward-notifier",
    "steward-deployer",
];
/// The operator's binary: it talks to the services through the bus only.
const CLI: &str = "steward-cli";
/// Crates that test the binaries; they may depend on a service to drive it.
const TEST_CRATES: [&str; 2] = ["steward-system-tests", "steward-testkit"];
/// Pure data at the bottom of the workspace: nothing of Steward below them.
const BOTTOM: [&str; 4] =
    ["steward-events", "steward-labels", "steward-failpoints", "steward-agekeys"];

/// External crates only one workspace crate may use: (dependency, owner, why).
const OWNED: [(&str, &str, &str); 2] = [
    ("bollard", "steward-engine", "the only crate that talks to Docker"),
    ("async-nats", "steward-bus", "the only crate that talks to NATS"),
];

/// Justified uses of an owned dependency outside its owner: (crate, dependency, kind, why).
const OWNED_EXCEPTIONS: [(&str, &str, Kind, &str); 3] = [
    (
        "steward-system-tests",
        "async-nats",
        Kind::Dev,
        "crash_points.rs watches a consumer's pending counts on the server as an outside \
         observer; no shipped code does",
    ),
    (
        "steward-testkit",
        "async-nats",
        Kind::Normal,
        "a test-only crate: the hostile-leaf cases reach the hub's JetStream as a raw \
         client to edit a source's filter and forge stamps, which steward-bus must never offer",
    ),
    (
        "steward-sockproxy",
        "bollard",
        Kind::Dev,
        "its tests make raw Docker calls the engine crate never makes, to prove the proxy \
         refuses them",
    ),
];

/// Service-only crates the backup bucket's crate must not bring into the CLI.
const NOT_IN_STORE: [&str; 7] = [
    "bollard",
    "async-nats",
    "age",
    "async-compression",
    "steward-engine",
    "steward-bus",
    "steward-runtime",
];

/// Service-only crates the CLI must not need at all: it talks to the services through the bus
/// and reads its settings through `steward-settings`, never through the services' runtime.
const NOT_IN_CLI: [&str; 4] = ["bollard", "steward-engine", "steward-runtime", "axum"];

/// What the settings crate (the CLI's and every service's reader of the environment) must not
/// need: it stays small, so the CLI can use it without Docker, NATS or an HTTP server.
const NOT_IN_SETTINGS: [&str; 6] =
    ["bollard", "async-nats", "axum", "steward-engine", "steward-bus", "steward-runtime"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Normal,
    Dev,
    Build,
}

impl Kind {
    fn of(dep: &Value) -> Kind {
        match dep["kind"].as_str() {
            Some("dev") => Kind::Dev,
            Some("build") => Kind::Build,
            _ => Kind::Normal,
        }
    }
}

/// The workspace as `cargo metadata` sees it.
struct Workspace {
    /// Workspace crate → its declared dependencies (package name, kind).
    declared: BTreeMap<String, BTreeSet<(String, Kind)>>,
    /// Every resolved package (by name) → the packages it needs to build and run (normal and
    /// build edges; dev edges only matter to its own tests).
    needs: BTreeMap<String, BTreeSet<String>>,
}

impl Workspace {
    fn read() -> Self {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // --locked: a test never rewrites Cargo.lock; `cargo test` has updated it before this runs.
        let output = Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--locked", "--manifest-path"])
            .arg(&manifest)
            .output()
            .unwrap_or_else(|e| panic!("cannot run cargo metadata: {e}"));
        assert!(
            output.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let meta: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("cargo metadata printed no JSON: {e}"));
        let empty = vec![];
        let members: BTreeSet<&str> = meta["workspace_members"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let mut names = BTreeMap::new();
        let mut declared = BTreeMap::new();
        for p in meta["packages"].as_array().unwrap_or(&empty) {
            let (Some(id), Some(name)) = (p["id"].as_str(), p["name"].as_str()) else { continue };
            names.insert(id.to_owned(), name.to_owned());
            if members.contains(id) {
                let deps = p["dependencies"].as_array().unwrap_or(&empty);
                let deps = deps
                    .iter()
                    .filter_map(|d| Some((d["name"].as_str()?.to_owned(), Kind::of(d))))
                    .collect();
                declared.insert(name.to_owned(), deps);
            }
        }
        let mut needs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for node in meta["resolve"]["nodes"].as_array().unwrap_or(&empty) {
            let Some(name) = node["id"].as_str().and_then(|id| names.get(id)) else { continue };
            let edges = needs.entry(name.clone()).or_default();
            for dep in node["deps"].as_array().unwrap_or(&empty) {
                let kinds = dep["dep_kinds"].as_array().unwrap_or(&empty);
                if kinds.iter().any(|k| Kind::of(k) != Kind::Dev) {
                    if let Some(to) = dep["pkg"].as_str().and_then(|id| names.get(id)) {
                        edges.insert(to.clone());
                    }
                }
            }
        }
        assert!(declared.contains_key(CLI), "no {CLI} in the workspace: is this the right one?");
        Self { declared, needs }
    }

    /// What `from` needs to build and run, transitively, not looking past `skip`.
    fn closure(&self, from: &str, skip: &[&str]) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_owned()];
        while let Some(name) = todo.pop() {
            for next in self.needs.get(&name).into_iter().flatten() {
                if !skip.contains(&next.as_str()) && seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    }

    /// A path of needs from `from` to `to`, not through `skip`, for the message.
    fn path(&self, from: &str, to: &str, skip: &[&str]) -> String {
        let mut came_from: BTreeMap<String, String> = BTreeMap::new();
        let mut todo = std::collections::VecDeque::from([from.to_owned()]);
        while let Some(name) = todo.pop_front() {
            if name == to {
                let mut path = vec![name.clone()];
                let mut at = name;
                while let Some(prev) = came_from.get(&at) {
                    path.push(prev.clone());
                    at = prev.clone();
                }
                path.reverse();
                return path.join(" -> ");
            }
            for next in self.needs.get(&name).into_iter().flatten() {
                if next != from && !skip.contains(&next.as_str()) && !came_from.contains_key(next) {
                    came_from.insert(next.clone(), name.clone());
                    todo.push_back(next.clone());
                }
            }
        }
        format!("{from} does not need {to}")
    }
}

fn report(what: &str, errors: Vec<String>) {
    assert!(errors.is_empty(), "{what}:\n  {}", errors.join("\n  "));
}

#[test]
fn docker_and_nats_each_have_one_crate() {
    let ws = Workspace::read();
    let mut errors = vec![];
    for (krate, deps) in &ws.declared {
        for (dep, kind) in deps {
            let Some((_, owner, why)) = OWNED.iter().find(|(d, ..)| d == dep) else { continue };
            let excepted =
                OWNED_EXCEPTIONS.iter().any(|(c, d, k, _)| c == krate && d == dep && k == kind);
            if krate != owner && !excepted {
                errors.push(format!(
                    "{krate} depends on {dep} ({kind:?}): {owner} is {why}; use {owner}'s API \
                     (or add a justified exception to OWNED_EXCEPTIONS for a test crate)"
                ));
            }
        }
    }
    for (krate, dep, kind, _) in OWNED_EXCEPTIONS {
        if !ws.declared.get(krate).is_some_and(|d| d.contains(&(dep.to_owned(), kind))) {
            errors.push(format!(
                "{krate} no longer depends on {dep} ({kind:?}): remove its exception"
            ));
        }
    }
    // The exceptions above hold only while no shipped binary links a test crate.
    for (krate, deps) in &ws.declared {
        for (dep, kind) in deps {
            let shipped = !TEST_CRATES.contains(&krate.as_str());
            if shipped && TEST_CRATES.contains(&dep.as_str()) && *kind != Kind::Dev {
                errors.push(format!(
                    "{krate} depends on {dep} ({kind:?}): a test crate is a dev-dependency only"
                ));
            }
        }
    }
    report("a crate uses Docker or NATS directly", errors);
}

#[test]
fn services_and_the_cli_share_only_libraries() {
    let ws = Workspace::read();
    let mut errors = vec![];
    for (krate, deps) in &ws.declared {
        if TEST_CRATES.contains(&krate.as_str()) {
            continue;
        }
        for (dep, kind) in deps {
            if SERVICES.contains(&dep.as_str()) && dep != krate {
                let role = if SERVICES.contains(&krate.as_str()) {
                    "a service depends on another service"
                } else if krate == CLI {
                    "the CLI depends on a service (it talks to services through the bus)"
                } else {
                    "a library depends on a service"
                };
                errors.push(format!(
                    "{krate} -> {dep} ({kind:?}): {role}; move what is shared into a library crate"
                ));
            }
        }
    }
    report("a boundary between services is crossed", errors);
}

#[test]
fn pure_data_crates_depend_on_nothing_of_steward() {
    let ws = Workspace::read();
    let mut errors = vec![];
    for krate in BOTTOM {
        let deps = ws.declared.get(krate).unwrap_or_else(|| panic!("no {krate} in the workspace"));
        for (dep, kind) in deps {
            if ws.declared.contains_key(dep) {
                errors.push(format!(
                    "{krate} -> {dep} ({kind:?}): {krate} is at the bottom of the workspace"
                ));
            }
        }
    }
    report("a pure data crate depends on the workspace above it", errors);
}

#[test]
fn the_backup_store_brings_nothing_service_only_into_the_cli() {
    let ws = Workspace::read();
    let store = ws.closure("steward-store", &[]);
    let mut errors: Vec<String> = NOT_IN_STORE
        .iter()
        .filter(|dep| store.contains(**dep))
        .map(|dep| {
            format!(
                "{}: steward-store is what the CLI shares with the backup service",
                ws.path("steward-store", dep, &[])
            )
        })
        .collect();
    let cli = ws.closure(CLI, &[]);
    errors.extend(SERVICES.iter().filter(|s| cli.contains(**s)).map(|s| ws.path(CLI, s, &[])));
    errors.extend(
        NOT_IN_CLI
            .iter()
            .filter(|dep| cli.contains(**dep))
            .map(|dep| format!("{}: the CLI needs no service-only crate", ws.path(CLI, dep, &[]))),
    );
    let settings = ws.closure("steward-settings", &[]);
    errors.extend(NOT_IN_SETTINGS.iter().filter(|dep| settings.contains(**dep)).map(|dep| {
        format!(
            "{}: steward-settings is what the CLI shares with the services",
            ws.path("steward-settings", dep, &[])
        )
    }));
    report("the steward binary needs a service-only crate", errors);
}
