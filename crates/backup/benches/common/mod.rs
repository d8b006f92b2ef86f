//! The data set the backup benches read: DATA_MIB (default 1024) in a container's `/data`,
//! half one random file (`/data/lfs/blob`, as LFS objects: incompressible), half distinct
//! text files of 256 KiB (`/data/repos/f<N>.txt`, as repositories: compressible hex).

// Each bench uses a part.
#![allow(dead_code)]

use steward_testkit::docker::docker;

/// The set's size in MiB, from DATA_MIB.
pub fn data_mib() -> u32 {
    std::env::var("DATA_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024)
}

/// What `fill` writes: MiB of random data and the number of text files.
pub fn shape(data_mib: u32) -> (u32, u32) {
    let half = data_mib / 2;
    (half, half * 4)
}

/// One text file of 256 KiB (hex of random bytes) at `/data/repos/f$n.txt`, in `sh`.
const TEXT_FILE: &str =
    "head -c 131072 /dev/urandom | od -An -tx1 | head -c 262144 > /data/repos/f$n.txt";

/// Fills `container`'s `/data` with the set (`shape(data_mib)`).
pub fn fill(container: &str, data_mib: u32) {
    let (half, files) = shape(data_mib);
    docker(&[
        "exec", container, "sh", "-c",
        &format!(
            "mkdir -p /data/lfs /data/repos && dd if=/dev/urandom of=/data/lfs/blob bs=1M count={half} 2>/dev/null && \
             i=0; while [ $i -lt {files} ]; do n=$i; {TEXT_FILE}; i=$((i+1)); done"
        ),
    ]);
}

/// Rewrites `changed` of the set's text files (spread over the set), as a day's pushes would.
pub fn rewrite(container: &str, data_mib: u32, changed: u32) {
    let (_, files) = shape(data_mib);
    docker(&[
        "exec", container, "sh", "-c",
        &format!(
            "i=0; while [ $i -lt {changed} ]; do n=$((i * 97 % {files})); {TEXT_FILE}; i=$((i+1)); done"
        ),
    ]);
}
