//! Kill points for crash tests.
//!
//! `failpoint!("name")` (or `failpoint!("name", detail)`, named `name:detail`) marks a place
//! where a crash must be survivable: a persisted transition, a call to Docker. In a debug
//! build, with `STEWARD_FAILPOINTS` set, every point reached is logged to stderr as
//! `failpoint: NAME` (so a test learns which points a flow passes), and a point listed as
//! `NAME` or `NAME=N` aborts the process (SIGABRT: no destructor, no flush, like SIGKILL) at
//! its N-th hit (first by default); a point listed as `NAME=sleep:MS` pauses the process's
//! thread there for MS milliseconds at every hit instead (a test acts on the world while a flow
//! waits at a known step, e.g. replaces an object between a restore's check and its load).
//! Release builds compile the macro to nothing.
//!
//! Chosen over the `fail` crate because its actions (panic, return, sleep) do not kill the
//! process, and a panic is caught by the consume loop: a crash test needs the process gone.
//!
//! Processes a test cannot start itself (the updater in a container, restarted by Docker's
//! restart policy, and the successor it creates with its own environment) share a directory
//! named by `STEWARD_FAILPOINTS_DIR`: every point passed is appended to `passed` there (with a
//! token per process, so hits are counted per process), and every abort to `aborts`. A
//! process whose set has already aborted once arms `STEWARD_FAILPOINTS_THEN` instead (the
//! "twice" variant: the next point its recovery passes), and none after two aborts, so a
//! restarted process does not die at the same point forever.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// The variable naming the points to abort at: `a,b=2` (comma-separated `NAME[=N]`).
pub const ENV: &str = "STEWARD_FAILPOINTS";
/// A directory shared by the processes of one crash test (see the crate documentation).
pub const ENV_DIR: &str = "STEWARD_FAILPOINTS_DIR";
/// The points armed in a process started after one abort of its set.
pub const ENV_THEN: &str = "STEWARD_FAILPOINTS_THEN";

/// Marks a kill point. See the crate documentation.
#[macro_export]
macro_rules! failpoint {
    ($name:expr) => {{
        #[cfg(debug_assertions)]
        {
            $crate::hit($name);
        }
    }};
    ($name:expr, $detail:expr) => {{
        #[cfg(debug_assertions)]
        {
            $crate::hit(&format!("{}:{:?}", $name, $detail).to_lowercase());
        }
    }};
}

struct Points {
    /// Abort at the N-th hit of each named point.
    abort_at: HashMap<String, u32>,
    /// Pause at every hit of each named point, in milliseconds.
    sleep_ms: HashMap<String, u64>,
    hits: Mutex<HashMap<String, u32>>,
    /// The shared directory, with the number of aborts of the set when this process started.
    shared: Option<(std::path::PathBuf, usize)>,
    /// This process among the set's (the pid alone repeats: each container's is 1).
    token: String,
}

fn points() -> Option<&'static Points> {
    static POINTS: OnceLock<Option<Points>> = OnceLock::new();
    POINTS
        .get_or_init(|| {
            let spec = std::env::var(ENV).ok()?;
            let shared = std::env::var_os(ENV_DIR).map(std::path::PathBuf::from).map(|dir| {
                let aborts = aborts_in(&dir);
                (dir, aborts)
            });
            let armed = match &shared {
                None | Some((_, 0)) => spec,
                Some((_, 1)) => std::env::var(ENV_THEN).unwrap_or_default(),
                Some(_) => String::new(),
            };
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let token = format!("{}-{nanos}", std::process::id());
            let (abort_at, sleep_ms) = parse_all(&armed);
            Some(Points { abort_at, sleep_ms, hits: Mutex::default(), shared, token })
        })
        .as_ref()
}

/// How many processes of the set in `dir` aborted.
fn aborts_in(dir: &std::path::Path) -> usize {
    std::fs::read_to_string(dir.join("aborts")).map(|s| s.lines().count()).unwrap_or(0)
}

/// Appends `line` to `dir/name` (best effort: a test helper, not production code).
fn append(dir: &std::path::Path, name: &str, line: &str) {
    use std::io::Write as _;
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(name)) {
        let _ = writeln!(f, "{line}");
        let _ = f.sync_all();
    }
}

/// `a,b=2,c=sleep:500` → aborts {a: 1, b: 2} and sleeps {c: 500}.
fn parse_all(spec: &str) -> (HashMap<String, u32>, HashMap<String, u64>) {
    let mut sleeps = HashMap::new();
    let mut aborts = vec![];
    for p in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match p.split_once('=').and_then(|(n, a)| Some((n, a.trim().strip_prefix("sleep:")?))) {
            Some((name, ms)) => {
                sleeps.insert(name.trim().to_owned(), ms.trim().parse().unwrap_or(0));
            }
            None => aborts.push(p),
        }
    }
    (parse(&aborts.join(",")), sleeps)
}

/// `a,b=2` → {a: 1, b: 2}; a count that does not parse is 1.
fn parse(spec: &str) -> HashMap<String, u32> {
    spec.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((name, n)) => (name.trim().to_owned(), n.trim().parse().unwrap_or(1).max(1)),
            None => (p.to_owned(), 1),
        })
        .collect()
}

/// A point was reached (use the macro).
pub fn hit(name: &str) {
    let Some(points) = points() else { return };
    eprintln!("failpoint: {name}");
    if let Some((dir, _)) = &points.shared {
        append(dir, "passed", &format!("{} {name}", points.token));
    }
    if let Some(&ms) = points.sleep_ms.get(name) {
        eprintln!("failpoint: {name}: sleeping {ms}ms");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    let Some(&at) = points.abort_at.get(name) else { return };
    let mut hits = points.hits.lock().unwrap_or_else(|p| p.into_inner());
    let n = hits.entry(name.to_owned()).or_insert(0);
    *n = n.saturating_add(1);
    if *n == at {
        if let Some((dir, aborts)) = &points.shared {
            // Another process of the set aborted since this one started: its turn was taken.
            if aborts_in(dir) != *aborts {
                return;
            }
            append(dir, "aborts", &format!("{} {name}", points.token));
        }
        eprintln!("failpoint: {name}: aborting (hit {at})");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn specs_name_points_and_their_hit() {
        let p = super::parse(" saved:gating , swap:stopped=2,bad=x,,");
        assert_eq!(p.get("saved:gating"), Some(&1));
        assert_eq!(p.get("swap:stopped"), Some(&2));
        assert_eq!(p.get("bad"), Some(&1));
        assert_eq!(p.len(), 3);
        let (aborts, sleeps) = super::parse_all("a,b=sleep:250,c=2");
        assert_eq!(aborts.get("a"), Some(&1));
        assert_eq!(aborts.get("c"), Some(&2));
        assert_eq!(aborts.get("b"), None);
        assert_eq!(sleeps.get("b"), Some(&250));
    }
}
