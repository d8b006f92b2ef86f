//! Kill points for crash tests.
//!
//! `failpoint!("name")` (or `failpoint!("name", detail)`, named `name:detail`) marks a place
//! where a crash must be survivable: a persisted transition, a call to Docker. In a debug
//! build, with `STEWARD_FAILPOINTS` set, every point reached is logged to stderr as
//! `failpoint: NAME` (so a test learns which points a flow passes), and a point listed as
//! `NAME` or `NAME=N` aborts the process (SIGABRT: no destructor, no flush, like SIGKILL) at
//! its N-th hit (first by default). Release builds compile the macro to nothing.
//!
//! Chosen over the `fail` crate because its actions (panic, return, sleep) do not kill the
//! process, and a panic is caught by the consume loop: a crash test needs the process gone.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// The variable naming the points to abort at: `a,b=2` (comma-separated `NAME[=N]`).
pub const ENV: &str = "STEWARD_FAILPOINTS";

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
    hits: Mutex<HashMap<String, u32>>,
}

fn points() -> Option<&'static Points> {
    static POINTS: OnceLock<Option<Points>> = OnceLock::new();
    POINTS
        .get_or_init(|| {
            let spec = std::env::var(ENV).ok()?;
            Some(Points { abort_at: parse(&spec), hits: Mutex::default() })
        })
        .as_ref()
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
    let Some(&at) = points.abort_at.get(name) else { return };
    let mut hits = points.hits.lock().unwrap_or_else(|p| p.into_inner());
    let n = hits.entry(name.to_owned()).or_insert(0);
    *n = n.saturating_add(1);
    if *n == at {
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
    }
}
