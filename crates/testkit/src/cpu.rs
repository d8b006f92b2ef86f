//! CPU time of this process and of the engine, for benches that say where a phase's time
//! goes (Linux `/proc`).

/// CPU seconds (user + system) of process `pid` so far (Linux's USER_HZ is 100).
pub fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command's closing parenthesis; utime and stime are the 12th and
    // 13th of them.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let ticks: f64 =
        rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse::<f64>().ok()).sum();
    ticks / 100.0
}

/// CPU seconds so far of this process, and of the engine (dockerd, containerd, its shims).
pub fn cpu_now() -> (f64, f64) {
    let mut engine = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if matches!(comm.trim(), "dockerd" | "containerd") || comm.starts_with("containerd-shim") {
            engine += cpu_seconds(&pid);
        }
    }
    (cpu_seconds("self"), engine)
}

/// CPU seconds of this process and of the engine since `then` ([`cpu_now`]).
pub fn cpu_since(then: (f64, f64)) -> (f64, f64) {
    let now = cpu_now();
    (now.0 - then.0, now.1 - then.1)
}
