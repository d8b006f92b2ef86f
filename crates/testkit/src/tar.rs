//! Tar archives byte by byte, including the hostile ones no tar library writes (absolute names,
//! `..`, links out of the tree, PAX names that differ from the header's): what a hostile backup
//! bucket could hold.

/// One archive entry.
#[derive(Debug, Clone)]
pub struct Entry {
    name: String,
    kind: u8,
    link: String,
    data: Vec<u8>,
    /// A PAX `path` record before the header (which keeps `name`).
    pax_path: Option<String>,
}

/// Entry constructors.
pub mod entry {
    use super::Entry;

    fn new(name: &str, kind: u8, link: &str, data: &[u8]) -> Entry {
        Entry { name: name.into(), kind, link: link.into(), data: data.to_vec(), pax_path: None }
    }

    /// A directory.
    pub fn dir(name: &str) -> Entry {
        new(name, b'5', "", b"")
    }

    /// A regular file.
    pub fn file(name: &str, data: &[u8]) -> Entry {
        new(name, b'0', "", data)
    }

    /// A symbolic link.
    pub fn symlink(name: &str, target: &str) -> Entry {
        new(name, b'2', target, b"")
    }

    /// A hard link to another entry.
    pub fn hardlink(name: &str, target: &str) -> Entry {
        new(name, b'1', target, b"")
    }

    /// A block device node.
    pub fn device(name: &str) -> Entry {
        new(name, b'4', "", b"")
    }

    /// A file whose header says `name` and whose PAX record says `path`.
    pub fn pax_path(name: &str, path: &str, data: &[u8]) -> Entry {
        Entry { pax_path: Some(path.into()), ..file(name, data) }
    }
}

fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let s = format!("{value:0width$o}");
    field[..width].copy_from_slice(&s.as_bytes()[s.len() - width..]);
    field[width] = 0;
}

fn header(name: &str, kind: u8, link: &str, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.as_bytes();
    h[..n.len().min(100)].copy_from_slice(&n[..n.len().min(100)]);
    octal(&mut h[100..108], if kind == b'5' { 0o755 } else { 0o644 });
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0);
    h[156] = kind;
    let l = link.as_bytes();
    h[157..157 + l.len().min(100)].copy_from_slice(&l[..l.len().min(100)]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    octal(&mut h[148..155], sum);
    h[155] = b' ';
    h
}

fn push(out: &mut Vec<u8>, name: &str, kind: u8, link: &str, data: &[u8]) {
    out.extend_from_slice(&header(name, kind, link, data.len() as u64));
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// The archive of `entries` with its end blocks; names over 100 bytes get a GNU long name.
pub fn archive(entries: &[Entry]) -> Vec<u8> {
    let mut out = vec![];
    for e in entries {
        if let Some(path) = &e.pax_path {
            let record = format!("path={path}\n");
            // The length counts itself.
            let mut len = record.len() + 2;
            if format!("{len} {record}").len() != len {
                len += 1;
            }
            let pax = format!("{len} {record}");
            push(&mut out, "PaxHeaders/x", b'x', "", pax.as_bytes());
        }
        if e.name.len() > 100 {
            let mut name = e.name.as_bytes().to_vec();
            name.push(0);
            push(&mut out, "././@LongLink", b'L', "", &name);
        }
        push(&mut out, &e.name, e.kind, &e.link, &e.data);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}
