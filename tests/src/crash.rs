//! Which kills a crash matrix runs (`docs/reliability.md`, "What CI runs").
//!
//! A full matrix (every point in every variant) takes far longer than the suite's budget, so
//! by default a test runs a sample that rotates with a seed: the day (days since 1970, UTC)
//! unless `STEWARD_CRASH_SEED` sets it. The seed is printed, so a failed run is replayed with
//! the same kills; successive days cover every point. `STEWARD_CRASH_POINTS=all` runs the
//! full matrix (`scripts/crash-matrix.sh`), `STEWARD_CRASH_ONLY=a,b` only the points whose
//! names contain one of the words.

/// The variable that sets the sample's seed.
pub const SEED_VAR: &str = "STEWARD_CRASH_SEED";

/// `STEWARD_CRASH_POINTS=all`: every point in every variant.
pub fn full() -> bool {
    std::env::var("STEWARD_CRASH_POINTS").as_deref() == Ok("all")
}

/// The sample's seed: `STEWARD_CRASH_SEED`, else today's day number.
pub fn seed() -> u64 {
    match std::env::var(SEED_VAR) {
        // Set but empty (`STEWARD_CRASH_SEED= scripts/...`) means unset.
        Ok(v) if !v.trim().is_empty() => {
            v.trim().parse().unwrap_or_else(|e| panic!("{SEED_VAR}={v:?}: {e}"))
        }
        // Before 1970 only with a wrong clock; the day number is then 0.
        _ => u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp() / 86_400).unwrap_or(0),
    }
}

/// `points` restricted by `STEWARD_CRASH_ONLY` (comma-separated words a name must contain);
/// `None` when it names none.
pub fn only(points: &[String]) -> Option<Vec<String>> {
    let words = std::env::var("STEWARD_CRASH_ONLY").unwrap_or_default();
    let words: Vec<&str> = words.split(',').filter(|w| !w.is_empty()).collect();
    (!words.is_empty())
        .then(|| points.iter().filter(|p| words.iter().any(|w| p.contains(w))).cloned().collect())
}

/// The indexes (of `len`) a run with `seed` takes: every `shares`-th, from
/// `(seed + offset) % shares`. Over `shares` consecutive seeds each index is taken once.
pub fn shared(len: usize, shares: usize, offset: u64, seed: u64) -> Vec<usize> {
    let shares = shares.max(1);
    let first = usize::try_from(seed.wrapping_add(offset) % shares as u64).unwrap_or(0);
    (first..len).step_by(shares).collect()
}

/// `count` consecutive indexes of `len` (wrapping) from `seed % len`: over `len` consecutive
/// seeds each index is taken `count` times.
pub fn window(len: usize, count: usize, seed: u64) -> Vec<usize> {
    if len == 0 {
        return vec![];
    }
    let first = usize::try_from(seed % len as u64).unwrap_or(0);
    (0..count.min(len)).map(|i| (first + i) % len).collect()
}

/// `count` indexes of `len` evenly spread (`len / count` apart, wrapping) from `offset % len`:
/// over `len` consecutive offsets each index is taken `count` times (for `count` dividing
/// `len`; at least once for any `count`).
pub fn spread(len: usize, count: usize, offset: u64) -> Vec<usize> {
    if len == 0 {
        return vec![];
    }
    let count = count.clamp(1, len);
    let step = len / count;
    let first = usize::try_from(offset % len as u64).unwrap_or(0);
    (0..count).map(|i| (first + i * step) % len).collect()
}

/// Runs `run` on each of `runs`, `limit` at once, each on a thread of its own: a run blocks
/// its thread while it waits for a process, which would stall a run polled beside it; its
/// tasks still go to the calling test's runtime. A run's panic is the caller's, named with
/// the run (`T`'s debug form): with runs interleaved, the log no longer says which failed.
pub async fn at_once<T, F, Fut>(runs: impl IntoIterator<Item = T>, limit: usize, run: F)
where
    T: std::fmt::Debug + Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let run = std::sync::Arc::new(run);
    let runtime = tokio::runtime::Handle::current();
    let mut queue = runs.into_iter();
    let mut running = tokio::task::JoinSet::new();
    let mut labels = std::collections::HashMap::new();
    loop {
        while running.len() < limit.max(1) {
            let Some(item) = queue.next() else { break };
            let label = format!("{item:?}");
            eprintln!("run started: {label}");
            let (run, runtime) = (run.clone(), runtime.clone());
            let handle = running.spawn_blocking(move || runtime.block_on(run(item)));
            labels.insert(handle.id(), label);
        }
        match running.join_next_with_id().await {
            None => break,
            Some(Ok((id, ()))) => {
                labels.remove(&id);
            }
            Some(Err(e)) => {
                let label = labels.remove(&e.id()).unwrap_or_default();
                eprintln!("run FAILED: {label}");
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
                panic!("run {label} did not finish: {e}");
            }
        }
    }
}

/// Prints what a run kills and how to replay it or run everything.
pub fn announce(what: &str, chosen: &[String], of: usize, seed: u64) {
    eprintln!(
        "{what}: killing at {} of {of} points: {chosen:?} (replay: {SEED_VAR}={seed}; \
         every point: STEWARD_CRASH_POINTS=all)",
        chosen.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_over_consecutive_seeds_take_each_index_once() {
        for offset in 0..3 {
            let mut taken: Vec<usize> = (100..104).flat_map(|s| shared(10, 4, offset, s)).collect();
            taken.sort_unstable();
            assert_eq!(taken, (0..10).collect::<Vec<_>>(), "offset {offset}");
        }
        assert_eq!(shared(10, 4, 1, 0), [1, 5, 9]);
        assert_eq!(shared(3, 4, 0, 3), Vec::<usize>::new());
    }

    #[test]
    fn windows_over_consecutive_seeds_take_each_index_count_times() {
        let mut taken: Vec<usize> = (7..12).flat_map(|s| window(5, 2, s)).collect();
        taken.sort_unstable();
        assert_eq!(taken, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]);
        assert_eq!(window(2, 3, 5), [1, 0]);
        assert!(window(0, 2, 5).is_empty());
    }

    #[test]
    fn spreads_over_consecutive_offsets_take_each_index_count_times() {
        // Across day 366 too: the offset is the day number, which does not wrap there.
        for start in [0, 360, 20_420] {
            let mut taken: Vec<usize> =
                (start..start + 12).flat_map(|s| spread(12, 3, s)).collect();
            taken.sort_unstable();
            let expected: Vec<usize> = (0..12).flat_map(|i| [i, i, i]).collect();
            assert_eq!(taken, expected, "from offset {start}");
        }
        assert_eq!(spread(13, 3, 12), [12, 3, 7]);
        assert_eq!(spread(2, 5, 1), [1, 0]);
        assert!(spread(0, 3, 7).is_empty());
    }
}
