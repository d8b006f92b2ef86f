//! The allow-lists: which Docker API calls each role may make, as data.
//!
//! Derived from what `steward-engine` calls for each service (see docs/security.md, "Docker
//! socket proxy"): a call not listed here is refused with 403, whatever the role.

use std::fmt;
use std::str::FromStr;

/// A Steward service that talks to Docker, each through a socket of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Lists containers and reads image digests.
    Watcher,
    /// Reads container state; runs `pg_isready` by exec.
    Health,
    /// Pulls, recreates, rolls back; exec and archive reads for certificate renewal.
    Updater,
    /// Exec (`pg_dump`, `pg_restore`), archives both ways, scratch and helper containers.
    Backup,
    /// `docker-compose` on the deployer's own projects (pull, create, start, stop, remove,
    /// rename, a project's network and volumes, `run` attached), and the health gate's reads.
    Deployer,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] =
        [Role::Watcher, Role::Health, Role::Updater, Role::Backup, Role::Deployer];

    /// The role's name, as in `STEWARD_SOCKPROXY_SOCKETS`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Watcher => "watcher",
            Role::Health => "health",
            Role::Updater => "updater",
            Role::Backup => "backup",
            Role::Deployer => "deployer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.name() == s).ok_or_else(|| {
            format!("unknown role {s:?} (expected watcher, health, updater, backup or deployer)")
        })
    }
}

/// What is checked beyond method and path before a request is forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Nothing more.
    None,
    /// An exec's creation: its body (never privileged; the health role only `pg_isready`,
    /// without stdin) and its target container (never the proxy's).
    Exec,
    /// A container's creation: its body (never the Docker socket, never the volumes of the
    /// proxy's container; the backup role only the shapes it makes) .
    Create,
    /// The container in the path is not the proxy's own (an archive read or write).
    Target,
    /// The updater's image removal (the old-image cleanup): only by image id
    /// (`sha256:<64 hex>`, never a name another repository shares), never forced.
    ImageRemove,
    /// The health role's archive read: only a certificate (a `*.pem` not named `privkey*`)
    /// or a `live` directory of certbot's links, and never the proxy's container.
    CertRead,
    /// A volume's creation: the local driver without options (options can make a "volume"
    /// that is a bind of any host path, the engine's socket included).
    VolumeCreate,
}

/// One allowed call.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    /// HTTP method.
    pub method: &'static str,
    /// Path without the `/v1.xx` prefix: `*` is one segment, `**` one or more (image names
    /// have slashes).
    pub path: &'static str,
    /// The roles that may make it.
    pub roles: &'static [Role],
    /// What else is checked.
    pub check: Check,
}

use Role::{Backup, Deployer, Health, Updater, Watcher};
const EVERY: &[Role] = &[Watcher, Health, Updater, Backup, Deployer];
const EXEC: &[Role] = &[Health, Updater, Backup, Deployer];
const CHANGE: &[Role] = &[Updater, Backup, Deployer];
const PULL: &[Role] = &[Updater, Deployer];

const fn rule(method: &'static str, path: &'static str, roles: &'static [Role]) -> Rule {
    Rule { method, path, roles, check: Check::None }
}

const fn checked(
    method: &'static str,
    path: &'static str,
    roles: &'static [Role],
    check: Check,
) -> Rule {
    Rule { method, path, roles, check }
}

/// Every allowed call. Each line names the `steward-engine` calls that need it.
pub const RULES: &[Rule] = &[
    // Engine::ping (every service's readiness), version negotiation, Engine::version.
    rule("GET", "/_ping", EVERY),
    rule("HEAD", "/_ping", EVERY),
    rule("GET", "/version", EVERY),
    // Engine::name: the default of STEWARD_HOST, read once at start.
    rule("GET", "/info", EVERY),
    // running_containers, containers, container_id, health_view, brief, inspect_json, ...
    rule("GET", "/containers/json", EVERY),
    rule("GET", "/containers/*/json", EVERY),
    // repo_digests, has_image, replace (the new image's defaults).
    rule("GET", "/images/**/json", EVERY),
    // health_view on Podman without systemd: runs a container's own healthcheck when one is
    // due (every caller of health_view: the health service, the updater's and the restore's
    // health gates).
    rule("GET", "/libpod/containers/*/healthcheck", EXEC),
    // repo_digests on Podman: the names an image had (`NamesHistory`, libpod's inspect only).
    rule("GET", "/libpod/images/*/json", EVERY),
    // logs_tail (rollback reasons, helper output).
    rule("GET", "/containers/*/logs", CHANGE),
    // exec, exec_stdout, exec_stdin, exec_as: create, start (an HTTP upgrade), exit code.
    checked("POST", "/containers/*/exec", EXEC, Check::Exec),
    rule("POST", "/exec/*/start", EXEC),
    rule("GET", "/exec/*/json", EXEC),
    // pull_digest; tag_local_digest (a rollback to an image still on the host).
    rule("POST", "/images/create", PULL),
    rule("POST", "/images/**/tag", &[Updater]),
    // images, remove_image: the old-image cleanup (by id, never forced; the engine refuses
    // to remove an image a container uses).
    checked("DELETE", "/images/*", &[Updater], Check::ImageRemove),
    // replace, create_successor_of (updater); start_scratch, run_with_volumes_of (backup).
    checked("POST", "/containers/create", CHANGE, Check::Create),
    rule("POST", "/containers/*/start", CHANGE),
    rule("POST", "/containers/*/stop", CHANGE),
    // restart: the health service's self-healing (`steward.health.restart=true`).
    rule("POST", "/containers/*/restart", &[Health]),
    rule("DELETE", "/containers/*", CHANGE),
    // replace, take_over, restore, remove_leftovers (parking names); rejoin.
    rule("POST", "/containers/*/rename", PULL),
    rule("POST", "/networks/*/connect", PULL),
    // run_with_volumes_of; `docker-compose run` waits for its one-off.
    rule("POST", "/containers/*/wait", &[Backup, Deployer]),
    // `docker-compose` (the deployer, on its own projects): `up` makes the project's network
    // and named volumes when missing (a volume only plain: `VolumeCreate`) and looks them up;
    // `run` attaches to its one-off (the test and the pre-deployment commands). Containers
    // it creates go through the same `Create` check as above. (What compose 1.29 calls, read
    // off the proxy's debug log: crates/sockproxy/tests/engine.rs.)
    rule("GET", "/networks/*", &[Deployer]),
    rule("POST", "/networks/create", &[Deployer]),
    rule("POST", "/networks/*/disconnect", &[Deployer]),
    rule("GET", "/volumes/*", &[Deployer]),
    checked("POST", "/volumes/create", &[Deployer], Check::VolumeCreate),
    checked("POST", "/containers/*/attach", &[Deployer], Check::Target),
    rule("GET", "/images/json", &[Updater]),
    // download_path (backups; the updater's certificate fingerprints), upload_tar (restores).
    checked("GET", "/containers/*/archive", CHANGE, Check::Target),
    // The health service's certificate expiry check: certbot's live links and full chains.
    checked("GET", "/containers/*/archive", &[Health], Check::CertRead),
    checked("PUT", "/containers/*/archive", &[Backup], Check::Target),
    // The updater's write-back: a compose project's file through a created, never started
    // helper that bind-mounts the project's directory (`ProjectDir`): whether it is there,
    // and the new file.
    checked("HEAD", "/containers/*/archive", &[Updater], Check::Target),
    checked("PUT", "/containers/*/archive", &[Updater], Check::Target),
];

/// Why a request is refused before any check of its body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The path could mean something else to the engine than to us (`..`, `//`, encoded
    /// separators): never forwarded.
    #[error("path {0:?} is not in canonical form")]
    NotCanonical(String),
    /// No rule lets this role make the call.
    #[error("{method} {path} is not allowed for the {role} role")]
    NotAllowed {
        /// The role of the socket the request came in on.
        role: Role,
        /// HTTP method.
        method: String,
        /// The path, version prefix stripped.
        path: String,
    },
}

/// The path without a leading version prefix: Docker's `/v1.41`, or libpod's `/v4.0.0`.
pub fn strip_version(path: &str) -> &str {
    let Some(rest) = path.strip_prefix("/v") else { return path };
    let end = rest.find('/').unwrap_or(rest.len());
    let parts: Vec<&str> = rest[..end].split('.').collect();
    let numeric = |s: &&str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if (2..=3).contains(&parts.len()) && parts.iter().all(numeric) {
        &rest[end..]
    } else {
        path
    }
}

/// The rule that lets `role` call `method path` (path as received, query excluded).
pub fn decide(role: Role, method: &str, path: &str) -> Result<&'static Rule, Refusal> {
    let stripped = strip_version(path);
    if !canonical(stripped) {
        return Err(Refusal::NotCanonical(path.to_owned()));
    }
    RULES
        .iter()
        .find(|r| r.method == method && r.roles.contains(&role) && matches(r.path, stripped))
        .ok_or_else(|| Refusal::NotAllowed {
            role,
            method: method.to_owned(),
            path: stripped.to_owned(),
        })
}

/// The path's `*` segment after `/containers/` (the container an exec or archive call names).
pub fn container_of(path: &str) -> Option<&str> {
    strip_version(path).strip_prefix("/containers/")?.split('/').next().filter(|s| !s.is_empty())
}

fn canonical(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    path.starts_with('/')
        && !path.contains('\\')
        && !lower.contains("%2f")
        && !lower.contains("%2e")
        && !lower.contains("%5c")
        && path[1..].split('/').all(|s| !s.is_empty() && s != "." && s != "..")
}

fn matches(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = pattern[1..].split('/').collect();
    let path: Vec<&str> = path[1..].split('/').collect();
    let seg = |p: &str, s: &str| p == "*" || p == s;
    match pattern.iter().position(|p| *p == "**") {
        None => pattern.len() == path.len() && pattern.iter().zip(&path).all(|(p, s)| seg(p, s)),
        Some(at) => {
            let after = pattern.len() - at - 1;
            path.len() > at + after
                && pattern[..at].iter().zip(&path[..at]).all(|(p, s)| seg(p, s))
                && pattern[at + 1..].iter().zip(&path[path.len() - after..]).all(|(p, s)| seg(p, s))
        }
    }
}

/// Sources of bind mounts that hand out the engine's socket: the socket itself or a directory
/// holding it, Docker's or rootful Podman's (`/run/podman/podman.sock`, whose directory the
/// compose stack's Podman layer mounts into the proxy).
const SOCKET_SOURCES: &[&str] = &[
    "/",
    "/var",
    "/var/run",
    "/run",
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/var/run/podman",
    "/run/podman",
];

/// Whether a bind or mount source is the engine's socket or a directory holding it.
pub fn is_socket_source(source: &str) -> bool {
    let trimmed = source.trim_end_matches('/');
    let source = if trimmed.is_empty() { "/" } else { trimmed };
    SOCKET_SOURCES.contains(&source)
        || source.ends_with("/docker.sock")
        || source.ends_with("/podman.sock")
}

/// Checks an exec's creation body for `role`. Errors say why it is refused.
pub fn check_exec(role: Role, body: &serde_json::Value) -> Result<(), String> {
    if body.get("Privileged").and_then(|v| v.as_bool()) == Some(true) {
        return Err("a privileged exec is not allowed".into());
    }
    if role == Role::Health {
        let program = body
            .get("Cmd")
            .and_then(|c| c.as_array())
            .and_then(|c| c.first())
            .and_then(|p| p.as_str())
            .unwrap_or_default();
        let args: Vec<&str> = body
            .get("Cmd")
            .and_then(|c| c.as_array())
            .map(|c| c.iter().skip(1).map(|a| a.as_str().unwrap_or("\0")).collect())
            .unwrap_or_default();
        // Read-only commands: the database probe, free space, nginx's configuration test
        // (`-t` alone: `-s` would signal the server, `-g` set directives, `-c` another file).
        let allowed = match program {
            "pg_isready" | "df" => true,
            "nginx" => matches!(args[..], ["-t"] | ["-t", "-q"] | ["-q", "-t"]),
            _ => false,
        };
        if !allowed {
            return Err(format!(
                "the health role may exec only pg_isready, df and nginx -t, not {program:?} {args:?}"
            ));
        }
        if body.get("AttachStdin").and_then(|v| v.as_bool()) == Some(true) {
            return Err("the health role may not attach stdin".into());
        }
    }
    Ok(())
}

/// Checks an image removal: the path names an image id, and the query does not force it.
pub fn check_image_remove(path: &str, query: Option<&str>) -> Result<(), String> {
    let id = strip_version(path).strip_prefix("/images/").unwrap_or_default();
    let hex = id.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(format!(
            "an image may be removed only by its id (sha256:<64 hex>), not {id:?}"
        ));
    }
    for kv in query.unwrap_or_default().split('&').filter(|kv| !kv.is_empty()) {
        let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
        let allowed = match key {
            "force" | "noprune" => matches!(value, "false" | "0"),
            _ => false,
        };
        if !allowed {
            return Err(format!("an image removal may not set {kv:?} (never forced)"));
        }
    }
    Ok(())
}

/// Checks the health role's archive read by its query (`path=...`): a certificate file
/// (`*.pem`, never `privkey*`) or a directory named `live` (certbot's links, no key material),
/// as an absolute path without `..`.
pub fn check_cert_read(query: Option<&str>) -> Result<(), String> {
    let raw = query
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("path="))
        .ok_or("an archive read without a path")?;
    let path = percent_decode(raw).ok_or_else(|| format!("path {raw:?} is not well encoded"))?;
    let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
    let canonical = path.starts_with('/')
        && !path.contains('\0')
        && path.trim_end_matches('/')[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    let certificate = last.ends_with(".pem") && !last.starts_with("privkey");
    if canonical && (certificate || last == "live") {
        Ok(())
    } else {
        Err(format!("the health role may read only certificates (*.pem, not privkey*) or a live directory, not {path:?}"))
    }
}

/// `%XX`-decodes a query value strictly (`None` for a bad escape or non-UTF-8).
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Checks a volume's creation body: the local driver (or none named), no driver options.
pub fn check_volume_create(body: &serde_json::Value) -> Result<(), String> {
    let driver = body.get("Driver").and_then(|d| d.as_str()).unwrap_or_default();
    if !driver.is_empty() && driver != "local" {
        return Err(format!("a volume of driver {driver:?} is not allowed (only local)"));
    }
    let options = body.get("DriverOpts").and_then(|o| o.as_object());
    if options.is_some_and(|o| !o.is_empty()) {
        return Err(
            "a volume with driver options is not allowed (they can bind any host path): create it by hand".into(),
        );
    }
    Ok(())
}

/// What a container's creation names that the caller must check against the proxy's own
/// container: containers it borrows volumes from, and named volumes it mounts.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CreateTargets {
    /// `HostConfig.VolumesFrom`'s containers.
    pub containers: Vec<String>,
    /// Named volumes (`Binds` whose source is not a path, `Mounts` of type volume).
    pub volumes: Vec<String>,
}

/// Checks a container's creation body for `role`; returns what it names that the caller must
/// check is not the proxy's own (the containers of `HostConfig.VolumesFrom`, named volumes:
/// the proxy's volumes hold the other roles' sockets).
pub fn check_create(role: Role, body: &serde_json::Value) -> Result<CreateTargets, String> {
    let host = body.get("HostConfig").cloned().unwrap_or(serde_json::Value::Null);
    let binds = host.get("Binds").and_then(|b| b.as_array()).cloned().unwrap_or_default();
    for bind in binds.iter().filter_map(|b| b.as_str()) {
        let source = bind.split(':').next().unwrap_or_default();
        if is_socket_source(source) {
            return Err(format!(
                "a bind of {source} (the engine's socket or a directory holding it) is not allowed"
            ));
        }
    }
    let mut volumes: Vec<String> = binds
        .iter()
        .filter_map(|b| b.as_str())
        .map(|b| b.split(':').next().unwrap_or_default())
        .filter(|source| !source.is_empty() && !source.starts_with('/'))
        .map(str::to_owned)
        .collect();
    let mounts = host.get("Mounts").and_then(|m| m.as_array()).cloned().unwrap_or_default();
    for mount in &mounts {
        let source = mount.get("Source").and_then(|s| s.as_str()).unwrap_or_default();
        let kind = mount.get("Type").and_then(|t| t.as_str());
        if kind == Some("bind") && is_socket_source(source) {
            return Err(format!("a mount of {source} (the engine's socket or a directory holding it) is not allowed"));
        }
        if kind == Some("volume") {
            // A volume made at the create with driver options: a bind of any host path. Only
            // the deployer's creates come from a repository; the updater recreates what runs.
            let driver = mount.pointer("/VolumeOptions/DriverConfig");
            let configured =
                driver.is_some_and(|d| !d.is_null() && d.as_object().is_none_or(|o| !o.is_empty()));
            if role == Role::Deployer && configured {
                return Err("a volume mount with a driver configuration is not allowed".into());
            }
            if !source.is_empty() {
                volumes.push(source.to_owned());
            }
        }
    }
    if role == Role::Backup {
        check_backup_host_config(&host)?;
    }
    let volumes_from = host.get("VolumesFrom").and_then(|v| v.as_array()).cloned();
    let containers = volumes_from
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.as_str())
        // `name[:ro|rw]`.
        .map(|v| v.split(':').next().unwrap_or_default().to_owned())
        .collect();
    Ok(CreateTargets { containers, volumes })
}

/// The field names the checks read, as the engine spells them.
const CHECKED_FIELDS: &[&str] = &[
    "HostConfig",
    "Binds",
    "Mounts",
    "Source",
    "Type",
    "VolumeOptions",
    "DriverConfig",
    "VolumesFrom",
    "NetworkMode",
    "Privileged",
    "Cmd",
    "AttachStdin",
    "Driver",
    "DriverOpts",
    "Labels",
    "Links",
    "NetworkingConfig",
    "EndpointsConfig",
    "Aliases",
];

/// Refuses a body the engine could read otherwise than the checks do. The checks read JSON
/// with exact keys; the engines (Go's decoder) match a key to a field whatever its case, with
/// Unicode's folding (`ſ` is an `s` there), and merge a key given twice. So
/// `{"hostConfig": {"Binds": ["/var/run:/x"]}}`, or `HostConfig` given twice, passed every
/// check and reached the engine with the bind. In the objects the checks read (the body,
/// `HostConfig`, each mount and its volume options, the networking configuration and each
/// endpoint), a key that is not ASCII, two keys equal but for case, or a key equal to a
/// checked field but for case is refused. (A key given twice exactly is read as its last
/// value, and the proxy forwards the body as read: the engine gets that one only.)
pub fn check_unambiguous(body: &serde_json::Value) -> Result<(), String> {
    fn object(path: &str, value: &serde_json::Value) -> Result<(), String> {
        let Some(fields) = value.as_object() else { return Ok(()) };
        let mut seen: Vec<String> = vec![];
        for key in fields.keys() {
            if !key.is_ascii() {
                return Err(format!("a key that is not ASCII in {path}: {key:?}"));
            }
            let folded = key.to_ascii_lowercase();
            if seen.contains(&folded) {
                return Err(format!("two keys equal but for case in {path}: {key:?}"));
            }
            if CHECKED_FIELDS.iter().any(|f| f.eq_ignore_ascii_case(key) && f != key) {
                return Err(format!("key {key:?} in {path} is a checked field spelled otherwise"));
            }
            seen.push(folded);
        }
        Ok(())
    }
    object("the body", body)?;
    let host = body.get("HostConfig").unwrap_or(&serde_json::Value::Null);
    object("HostConfig", host)?;
    for mount in host.get("Mounts").and_then(|m| m.as_array()).into_iter().flatten() {
        object("a mount", mount)?;
        let options = mount.get("VolumeOptions").unwrap_or(&serde_json::Value::Null);
        object("a mount's VolumeOptions", options)?;
        object(
            "a mount's DriverConfig",
            options.get("DriverConfig").unwrap_or(&serde_json::Value::Null),
        )?;
    }
    let networking = body.get("NetworkingConfig").unwrap_or(&serde_json::Value::Null);
    object("NetworkingConfig", networking)?;
    // Its keys are network names (exact in Go's maps too); each endpoint's are fields.
    let endpoints = networking.get("EndpointsConfig").unwrap_or(&serde_json::Value::Null);
    for endpoint in endpoints.as_object().into_iter().flat_map(|e| e.values()) {
        object("an endpoint", endpoint)?;
    }
    Ok(())
}

/// Compose's labels on a container: a one-off (`docker-compose run`), and its service.
const ONE_OFF_LABEL: &str = "com.docker.compose.oneoff";
const SERVICE_LABEL: &str = "com.docker.compose.service";

/// Makes a compose one-off's creation body (`docker-compose run`) one Podman accepts and
/// resolves names for as Docker does; what was taken out (for the log). The caller applies it
/// on Podman only. docker-compose 1.29 gives every one-off links to the running containers of
/// its own service (seen as `["", ":site_web_1", ":web"]`; Compose v2 links one-offs to their
/// service too), and Podman refuses any link ("link is not supported"): each test and
/// pre-deployment command of a service that runs failed there. The links go. It also gives
/// the one-off its service's name as an alias on the project's networks; on Docker the link
/// to the service hides it, but without links the name would also reach the one-off itself
/// (a migration asking `http://web:8080/` got its own refused port one time in two): that
/// alias goes too, so the service's name reaches the service's containers only, as on Docker.
/// Other containers' bodies stay as they are.
pub fn one_off_for_podman(body: &mut serde_json::Value) -> Vec<String> {
    let label = |name: &str| {
        body.pointer(&format!("/Labels/{name}")).and_then(|v| v.as_str()).map(str::to_owned)
    };
    if label(ONE_OFF_LABEL).as_deref() != Some("True") {
        return vec![];
    }
    let service = label(SERVICE_LABEL);
    let mut removed = vec![];
    if let Some(links) = body.pointer_mut("/HostConfig/Links").and_then(|l| l.as_array_mut()) {
        removed.extend(links.drain(..).map(|l| format!("link {l}")));
    }
    let endpoints = body.pointer_mut("/NetworkingConfig/EndpointsConfig");
    for (network, endpoint) in endpoints.and_then(|e| e.as_object_mut()).into_iter().flatten() {
        let Some(aliases) = endpoint.get_mut("Aliases").and_then(|a| a.as_array_mut()) else {
            continue;
        };
        aliases.retain(|a| {
            let own = service.is_some() && a.as_str() == service.as_deref();
            if own {
                removed.push(format!("alias {a} on {network}"));
            }
            !own
        });
    }
    removed
}

/// The named volumes a container's inspect (or list entry) mounts.
pub fn named_volumes(container: &serde_json::Value) -> Vec<String> {
    let mounts = container.get("Mounts").and_then(|m| m.as_array()).cloned().unwrap_or_default();
    mounts
        .iter()
        .filter(|m| m.get("Type").and_then(|t| t.as_str()) == Some("volume"))
        .filter_map(|m| m.get("Name").and_then(|n| n.as_str()).map(str::to_owned))
        .collect()
}

/// The backup service makes two shapes only (a scratch server, a helper sharing a container's
/// volumes), both without network and without any host resource: anything else in
/// `HostConfig` is refused, so a stolen backup socket cannot make a container with host access.
fn check_backup_host_config(host: &serde_json::Value) -> Result<(), String> {
    let Some(fields) = host.as_object() else { return Ok(()) };
    for (key, value) in fields {
        let empty = match value {
            serde_json::Value::Null => true,
            serde_json::Value::Bool(b) => !b,
            serde_json::Value::Number(n) => n.as_f64() == Some(0.0),
            serde_json::Value::String(s) => s.is_empty(),
            serde_json::Value::Array(a) => a.is_empty(),
            serde_json::Value::Object(o) => o.is_empty(),
        };
        let strings = |v: &serde_json::Value| -> Option<Vec<String>> {
            v.as_array()?.iter().map(|s| s.as_str().map(str::to_owned)).collect()
        };
        let allowed = match key.as_str() {
            "NetworkMode" => value.as_str().is_some_and(|m| m == "none" || m.is_empty()),
            "VolumesFrom" => true,
            // The one-shot listing container (`listing::list_in_oneshot`): it ends by itself,
            // drops capabilities but reading past permissions, and gains none.
            "AutoRemove" | "CapDrop" => true,
            "CapAdd" => strings(value).is_some_and(|caps| {
                caps.iter().all(|c| c.trim_start_matches("CAP_") == "DAC_READ_SEARCH")
            }),
            "SecurityOpt" => strings(value).is_some_and(|opts| {
                opts.iter().all(|o| {
                    [
                        "no-new-privileges",
                        "no-new-privileges:true",
                        "label=disable",
                        "label:disable",
                    ]
                    .contains(&o.as_str())
                })
            }),
            _ => empty,
        };
        if !allowed {
            return Err(format!("HostConfig.{key} is not allowed for the backup role"));
        }
    }
    Ok(())
}

/// Whether a container (its inspect JSON) is the proxy's own, or otherwise holds the Docker
/// socket: no role may exec in it, read or write its files, or borrow its volumes.
pub fn is_protected(inspect: &serde_json::Value) -> bool {
    let labelled = inspect
        .pointer("/Config/Labels")
        .and_then(|l| l.as_object())
        .is_some_and(|l| l.contains_key(PROTECTED_LABEL));
    let mounts = inspect.get("Mounts").and_then(|m| m.as_array()).cloned().unwrap_or_default();
    let holds_socket = mounts.iter().any(|m| {
        m.get("Type").and_then(|t| t.as_str()) == Some("bind")
            && m.get("Source").and_then(|s| s.as_str()).is_some_and(is_socket_source)
    });
    labelled || holds_socket
}

/// The label that marks the proxy's container (compose sets it).
pub const PROTECTED_LABEL: &str = "steward.sockproxy";

#[cfg(test)]
mod tests {

    #[test]
    fn a_body_the_engine_could_read_otherwise_is_refused() {
        let refused = [
            // A checked field under another case: the engine reads it, the checks did not.
            r#"{"hostConfig": {"Binds": ["/var/run:/x"]}}"#,
            r#"{"HostConfig": {"binds": ["/var/run:/x"]}}"#,
            r#"{"HostConfig": {"Mounts": [{"type": "bind", "Source": "/var/run"}]}}"#,
            r#"{"privileged": true, "Cmd": ["sh"]}"#,
            // Two keys one field for the engine.
            r#"{"HostConfig": {}, "HOSTCONFIG": {"Privileged": true}}"#,
            r#"{"HostConfig": {"Memory": 1, "memory": 2}}"#,
            // Go folds `ſ` into `s`: "HoſtConfig" is HostConfig there.
            r#"{"Ho\u017ftConfig": {"Binds": ["/var/run:/x"]}}"#,
            r#"{"NetworkingConfig": {"EndpointsConfig": {"n": {"aliases": ["web"]}}}}"#,
        ];
        for body in refused {
            let json: serde_json::Value = serde_json::from_str(body).expect(body);
            assert!(check_unambiguous(&json).is_err(), "passed: {body}");
        }
        let fine = [
            r#"{"Image": "x", "HostConfig": {"Binds": ["data:/data"], "Memory": 1}}"#,
            // User data (labels, environment) is not folded: only the fields' own objects.
            r#"{"Labels": {"a": "1", "A": "2"}, "Env": ["X=1"]}"#,
            r#"{"NetworkingConfig": {"EndpointsConfig": {"Net": {"Aliases": ["web"]}, "net": {}}}}"#,
            "null",
        ];
        for body in fine {
            let json: serde_json::Value = serde_json::from_str(body).expect(body);
            assert_eq!(check_unambiguous(&json), Ok(()), "{body}");
        }
    }

    #[test]
    fn a_compose_one_off_loses_its_links_and_its_services_alias_and_nothing_else() {
        let body = |oneoff: &str, links: &[&str], aliases: &[&str]| {
            serde_json::json!({
                "Labels": {
                    "com.docker.compose.project": "site",
                    "com.docker.compose.service": "web",
                    "com.docker.compose.oneoff": oneoff
                },
                "HostConfig": { "Links": links, "Memory": 1 },
                "NetworkingConfig": { "EndpointsConfig": { "site_default": { "Aliases": aliases } } }
            })
        };
        // What docker-compose 1.29 sent for a one-off of `web` with one running container.
        let mut one_off = body("True", &["", ":site_web_1", ":web"], &["web", "other"]);
        assert_eq!(
            one_off_for_podman(&mut one_off),
            ["link \"\"", "link \":site_web_1\"", "link \":web\"", "alias \"web\" on site_default"]
        );
        assert_eq!(one_off, body("True", &[], &["other"]));
        // A service's own container (not a one-off) is left as it is.
        let mut service = body("False", &["site_db_1:db"], &["web"]);
        assert!(one_off_for_podman(&mut service).is_empty());
        assert_eq!(service, body("False", &["site_db_1:db"], &["web"]));
        let mut bare =
            serde_json::json!({ "Image": "x", "Labels": { "com.docker.compose.oneoff": "True" } });
        let before = bare.clone();
        assert!(one_off_for_podman(&mut bare).is_empty());
        assert_eq!(bare, before);
    }
    use super::*;
    use serde_json::json;

    fn allowed(role: Role, method: &str, path: &str) -> bool {
        decide(role, method, path).is_ok()
    }

    #[test]
    fn the_version_prefix_is_stripped_and_only_it() {
        assert_eq!(strip_version("/v1.41/containers/json"), "/containers/json");
        assert_eq!(strip_version("/v1.52/_ping"), "/_ping");
        assert_eq!(strip_version("/containers/json"), "/containers/json");
        assert_eq!(strip_version("/volumes/x"), "/volumes/x");
        assert_eq!(strip_version("/v1.x/containers/json"), "/v1.x/containers/json");
        assert_eq!(
            strip_version("/v4.0.0/libpod/containers/a/healthcheck"),
            "/libpod/containers/a/healthcheck"
        );
        assert_eq!(strip_version("/v1.2.3.4/containers/json"), "/v1.2.3.4/containers/json");
        assert_eq!(strip_version("/v1..2/containers/json"), "/v1..2/containers/json");
    }

    #[test]
    fn only_a_healthcheck_run_and_an_image_inspect_are_allowed_of_libpod() {
        for role in [Health, Updater, Backup] {
            assert!(allowed(role, "GET", "/v4.0.0/libpod/containers/abc/healthcheck"), "{role}");
        }
        for role in [Watcher, Health, Updater, Backup, Deployer] {
            assert!(allowed(role, "GET", "/v4.0.0/libpod/images/sha256:abc/json"), "{role}");
        }
        for (m, p) in [
            ("DELETE", "/v4.0.0/libpod/images/sha256:abc"),
            ("GET", "/v4.0.0/libpod/images/sha256:abc/tree"),
            ("POST", "/v4.0.0/libpod/containers/abc/healthcheck"),
            ("GET", "/libpod/containers/abc/healthcheck/x"),
            ("POST", "/v4.0.0/libpod/containers/abc/exec"),
            ("POST", "/v4.0.0/libpod/images/pull"),
            ("GET", "/v4.0.0/libpod/containers/json"),
        ] {
            assert!(!allowed(Health, m, p), "{m} {p}");
        }
    }

    #[test]
    fn the_watcher_only_reads() {
        for (m, p) in [
            ("GET", "/_ping"),
            ("HEAD", "/_ping"),
            ("GET", "/v1.41/version"),
            ("GET", "/v1.41/info"),
            ("GET", "/v1.41/containers/json"),
            ("GET", "/containers/abc/json"),
            ("GET", "/images/127.0.0.1:5000/e2e/app:stable/json"),
            ("GET", "/images/sha256:0123/json"),
        ] {
            assert!(allowed(Watcher, m, p), "{m} {p}");
        }
        for (m, p) in [
            ("POST", "/containers/create"),
            ("POST", "/v1.41/containers/abc/exec"),
            ("POST", "/exec/abc/start"),
            ("DELETE", "/containers/abc"),
            ("POST", "/containers/abc/start"),
            ("POST", "/containers/abc/stop"),
            ("POST", "/images/create"),
            ("GET", "/containers/abc/logs"),
            ("GET", "/containers/abc/archive"),
            ("POST", "/info"),
            ("GET", "/info/x"),
            ("GET", "/events"),
            ("POST", "/containers/json"),
            ("GET", "/volumes"),
            ("POST", "/build"),
            ("GET", "/v4.0.0/libpod/containers/abc/healthcheck"),
        ] {
            assert!(!allowed(Watcher, m, p), "{m} {p}");
        }
    }

    #[test]
    fn health_reads_only_certificates_through_the_archive() {
        assert_eq!(
            decide(Health, "GET", "/containers/certbot/archive").map(|r| r.check),
            Ok(Check::CertRead)
        );
        assert!(check_cert_read(Some("path=%2Fetc%2Fletsencrypt%2Flive")).is_ok());
        assert!(check_cert_read(Some("path=/etc/letsencrypt/archive/a/fullchain3.pem")).is_ok());
        for bad in [
            None,
            Some("path=%2Fetc%2Fletsencrypt%2Farchive%2Fa%2Fprivkey3.pem"),
            Some("path=/etc/letsencrypt"),
            Some("path=/etc/letsencrypt/live/../archive"),
            Some("path=%2Fx%2F..%2Fetc%2Fshadow.pem%"),
            Some("path=etc/live"),
            Some("path=%ZZ"),
        ] {
            assert!(check_cert_read(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn health_reads_execs_and_restarts_but_never_creates_or_removes() {
        for (m, p) in [
            ("GET", "/containers/json"),
            ("POST", "/containers/db/exec"),
            ("POST", "/exec/e1/start"),
            ("GET", "/exec/e1/json"),
            ("POST", "/containers/db/restart"),
        ] {
            assert!(allowed(Health, m, p), "{m} {p}");
        }
        // Only health restarts (the others stop and start, as their flows need).
        for role in [Watcher, Updater, Backup] {
            assert!(!allowed(role, "POST", "/containers/db/restart"), "{role:?}");
        }
        for (m, p) in [
            ("POST", "/containers/create"),
            ("DELETE", "/containers/db"),
            ("POST", "/containers/db/stop"),
            ("POST", "/images/create"),
        ] {
            assert!(!allowed(Health, m, p), "{m} {p}");
        }
        assert!(check_exec(Health, &json!({"Cmd": ["pg_isready", "-h", "127.0.0.1"]})).is_ok());
        assert!(check_exec(Health, &json!({"Cmd": ["df", "-Pk", "/data"]})).is_ok());
        assert!(check_exec(Health, &json!({"Cmd": ["nginx", "-t"]})).is_ok());
        for bad in [
            json!(["nginx", "-s", "stop"]),
            json!(["nginx", "-t", "-g", "x"]),
            json!(["nginx"]),
            json!(["nginx", "-t", 7]),
        ] {
            assert!(check_exec(Health, &json!({"Cmd": bad})).is_err(), "{bad}");
        }
        assert!(check_exec(Health, &json!({"Cmd": ["sh", "-c", "id"]})).is_err());
        assert!(check_exec(Health, &json!({})).is_err());
        let stdin = json!({"Cmd": ["pg_isready"], "AttachStdin": true});
        assert!(check_exec(Health, &stdin).is_err());
        assert!(check_exec(Updater, &json!({"Cmd": ["certbot", "renew"]})).is_ok());
        assert!(check_exec(Backup, &json!({"Cmd": ["ls"], "Privileged": true})).is_err());
    }

    #[test]
    fn only_the_updater_removes_images_by_id_and_never_forced() {
        let id = format!("sha256:{}", "ab".repeat(32));
        let path = format!("/v1.41/images/{id}");
        assert!(allowed(Updater, "GET", "/images/json"));
        let rule = decide(Updater, "DELETE", &path).expect("the updater may ask");
        assert!(matches!(rule.check, Check::ImageRemove));
        for role in [Watcher, Health, Backup] {
            assert!(!allowed(role, "DELETE", &path), "{role}");
            assert!(!allowed(role, "GET", "/images/json"), "{role}");
        }
        assert_eq!(check_image_remove(&path, Some("force=false&noprune=false")), Ok(()));
        assert_eq!(check_image_remove(&path, None), Ok(()));
        for (p, q) in [
            (path.as_str(), "force=true"),
            (path.as_str(), "force=1"),
            (path.as_str(), "noprune=false&force=True"),
            (path.as_str(), "platforms=x"),
            ("/images/nginx", ""),
            ("/images/gitea:1.22", ""),
            ("/images/sha256:abc", ""),
            (&format!("/images/sha256:{}", "AB".repeat(32)), ""),
        ] {
            assert!(check_image_remove(p, Some(q)).is_err(), "{p}?{q}");
        }
        // Anything under an image but the listing, inspect and tag stays refused.
        assert!(!allowed(Updater, "DELETE", "/images/sha256:ab/tag"));
        assert!(!allowed(Updater, "POST", "/images/prune"));
    }

    #[test]
    fn the_updater_and_backup_get_what_their_code_calls() {
        let updater_only = [
            ("POST", "/images/create"),
            ("POST", "/images/127.0.0.1:5000/e2e/app@sha256:00/tag"),
            ("POST", "/containers/abc/rename"),
            ("POST", "/networks/n1/connect"),
            ("HEAD", "/containers/abc/archive"),
        ];
        let backup_only = [("POST", "/containers/abc/wait")];
        let both = [
            ("PUT", "/containers/abc/archive"),
            ("POST", "/containers/create"),
            ("POST", "/containers/abc/start"),
            ("POST", "/containers/abc/stop"),
            ("DELETE", "/containers/abc"),
            ("GET", "/containers/abc/logs"),
            ("GET", "/containers/abc/archive"),
            ("POST", "/containers/abc/exec"),
        ];
        for (m, p) in both.iter().chain(&updater_only) {
            assert!(allowed(Updater, m, p), "updater {m} {p}");
        }
        for (m, p) in both.iter().chain(&backup_only) {
            assert!(allowed(Backup, m, p), "backup {m} {p}");
        }
        for (m, p) in backup_only {
            assert!(!allowed(Updater, m, p), "updater {m} {p}");
        }
        for (m, p) in updater_only {
            assert!(!allowed(Backup, m, p), "backup {m} {p}");
        }
        // What compose needs is the deployer's alone.
        let compose_only = [
            ("POST", "/containers/abc/attach"),
            ("POST", "/volumes/create"),
            ("POST", "/networks/create"),
            ("GET", "/networks/n1"),
            ("GET", "/volumes/v1"),
            ("POST", "/networks/n1/disconnect"),
        ];
        for role in Role::ALL {
            for (m, p) in compose_only {
                assert_eq!(allowed(role, m, p), role == Deployer, "{role} {m} {p}");
            }
        }
        for (m, p) in [("POST", "/containers/create"), ("POST", "/images/create")] {
            assert!(allowed(Deployer, m, p), "deployer {m} {p}");
        }
        // Nobody may do these.
        for role in Role::ALL {
            for (m, p) in [
                ("POST", "/containers/abc/kill"),
                ("POST", "/containers/abc/update"),
                ("POST", "/build"),
                ("DELETE", "/volumes/v1"),
                ("DELETE", "/networks/n1"),
                ("POST", "/images/abc/push"),
                ("POST", "/swarm/init"),
                ("POST", "/plugins/pull"),
                ("POST", "/containers/prune"),
                ("GET", "/secrets"),
            ] {
                assert!(!allowed(role, m, p), "{role} {m} {p}");
            }
        }
    }

    #[test]
    fn paths_that_could_mean_something_else_are_refused() {
        for p in [
            "/containers/../containers/create",
            "/containers/abc/../../images/create",
            "/containers//json",
            "/containers/abc%2F..%2Fcreate/json",
            "/containers/%2e%2e/json",
            "/containers/./json",
            "containers/json",
        ] {
            assert!(
                matches!(decide(Updater, "GET", p), Err(Refusal::NotCanonical(_))),
                "{p}: {:?}",
                decide(Updater, "GET", p)
            );
        }
    }

    #[test]
    fn creates_never_bind_the_socket_and_backup_makes_only_its_own_shapes() {
        let socket = json!({"Image": "x", "HostConfig": {"Binds": ["/var/run/docker.sock:/s"]}});
        let root = json!({"Image": "x", "HostConfig": {"Binds": ["/:/host:ro"]}});
        let mount = json!({"HostConfig": {"Mounts": [{"Type": "bind", "Source": "/run/"}]}});
        // Podman's socket and its directory (on a Podman host they are the engine's).
        let podman = json!({"HostConfig": {"Binds": ["/run/podman/podman.sock:/s"]}});
        let podman_dir = json!({"HostConfig": {"Binds": ["/run/podman:/engine:ro"]}});
        let podman_mount =
            json!({"HostConfig": {"Mounts": [{"Type": "bind", "Source": "/var/run/podman/"}]}});
        for body in [&socket, &root, &mount, &podman, &podman_dir, &podman_mount] {
            assert!(check_create(Updater, body).is_err(), "{body}");
            assert!(check_create(Backup, body).is_err(), "{body}");
        }
        // The updater recreates what exists: other binds and settings are the operator's.
        let nginx = json!({"HostConfig": {"Binds": ["/srv/nginx/templates:/etc/nginx/templates:ro"],
            "RestartPolicy": {"Name": "unless-stopped"}, "NetworkMode": "stack_default"}});
        assert_eq!(check_create(Updater, &nginx), Ok(CreateTargets::default()));
        assert!(check_create(Backup, &nginx).is_err());
        // The backup's two shapes (as bollard serialises them).
        let scratch = json!({"Image": "postgres:15", "Env": ["A=1"], "Labels": {"steward.helper": "s"},
            "HostConfig": {"NetworkMode": "none"}});
        assert_eq!(check_create(Backup, &scratch), Ok(CreateTargets::default()));
        let helper = json!({"Image": "busybox", "User": "0", "NetworkDisabled": true,
            "HostConfig": {"VolumesFrom": ["gitea:ro"], "NetworkMode": "none"}});
        let borrowed = check_create(Backup, &helper).expect("the helper");
        assert_eq!(borrowed.containers, ["gitea"]);
        let lister = json!({"Image": "busybox", "User": "0", "NetworkDisabled": true,
            "HostConfig": {"VolumesFrom": ["gitea:ro"], "NetworkMode": "none", "AutoRemove": true,
            "CapDrop": ["ALL"], "CapAdd": ["DAC_READ_SEARCH"],
            "SecurityOpt": ["no-new-privileges", "label=disable"]}});
        assert!(check_create(Backup, &lister).is_ok(), "the one-shot listing container");
        for host in [
            json!({"Privileged": true}),
            json!({"CapAdd": ["SYS_ADMIN"]}),
            json!({"CapAdd": ["DAC_READ_SEARCH", "NET_ADMIN"]}),
            json!({"SecurityOpt": ["apparmor=unconfined"]}),
            json!({"SecurityOpt": ["seccomp=unconfined"]}),
            json!({"PidMode": "host"}),
            json!({"NetworkMode": "host"}),
            json!({"Devices": [{"PathOnHost": "/dev/sda"}]}),
            json!({"Binds": ["data:/data"]}),
        ] {
            assert!(check_create(Backup, &json!({"HostConfig": host})).is_err(), "{host}");
        }
        // Named volumes are returned to be checked against the proxy's own (they hold the
        // roles' sockets); a volume made at the create with a driver configuration is refused.
        let named = json!({"HostConfig": {"Binds": ["data:/data", "/srv/x:/x"],
            "Mounts": [{"Type": "volume", "Source": "stack_docker-updater", "Target": "/s"}]}});
        let named = check_create(Deployer, &named).expect("named volumes");
        assert_eq!(named.volumes, ["data", "stack_docker-updater"]);
        let driven = json!({"HostConfig": {"Mounts": [{"Type": "volume", "Source": "v", "Target": "/v",
            "VolumeOptions": {"DriverConfig": {"Name": "local",
                "Options": {"type": "none", "o": "bind", "device": "/var/run"}}}}]}});
        assert!(check_create(Deployer, &driven).is_err());
        assert!(check_create(Updater, &driven).is_ok(), "the updater recreates what runs");
        // And a volume's own creation: local and plain only.
        assert_eq!(
            check_volume_create(&json!({"Name": "site-dev_data", "Driver": "local"})),
            Ok(())
        );
        assert_eq!(check_volume_create(&json!({"Name": "v", "DriverOpts": {}})), Ok(()));
        for bad in [
            json!({"Name": "v", "Driver": "local", "DriverOpts": {"type": "none", "o": "bind", "device": "/var/run"}}),
            json!({"Name": "v", "Driver": "rclone"}),
        ] {
            assert!(check_volume_create(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_proxys_container_is_protected() {
        let labelled = json!({"Config": {"Labels": {"steward.sockproxy": "true"}}, "Mounts": []});
        let socket = json!({"Config": {"Labels": {}},
            "Mounts": [{"Type": "bind", "Source": "/var/run/docker.sock"}]});
        let gitea = json!({"Config": {"Labels": {"steward.enable": "true"}},
            "Mounts": [{"Type": "volume", "Source": "/var/lib/docker/volumes/g/_data"}]});
        assert!(is_protected(&labelled));
        assert!(is_protected(&socket));
        assert!(!is_protected(&gitea));
        assert_eq!(container_of("/v1.41/containers/abc/exec"), Some("abc"));
        assert_eq!(container_of("/exec/abc/start"), None);
    }

    #[test]
    fn roles_parse_by_name() {
        for role in Role::ALL {
            assert_eq!(role.name().parse::<Role>(), Ok(role));
        }
        assert!("notifier".parse::<Role>().is_err());
    }
}
