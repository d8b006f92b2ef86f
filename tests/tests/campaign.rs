//! A seeded random campaign over the real `steward-updater` and `steward-notifier` (issue 16):
//! each seed drives a small deterministic generator that picks 3–6 actions against one
//! automatically updated app: publish `image.updated` for the next pushed release (sometimes
//! the broken one), redeliver an earlier `image.updated` (the same message again, as JetStream
//! would), replay an older one (a copy with a fresh id at its original's instant), SIGKILL the
//! updater or the notifier at a random moment, abort either at one of its failpoints, restart
//! the NATS server (its store persists), or remove the app's containers (`docker rm -f`, like
//! `compose down`). A dead service is restarted at once, as a restart policy would. The
//! notifier mails every outcome through the test bed's SMTP server to an address of the seed.
//!
//! After each seed, once both have settled (their consumers have nothing pending, every record
//! is terminal, no newer image waits in the queue, no notification is queued): both stop on
//! SIGTERM and fresh ones start, are ready, and publish and mail nothing; every flow
//! (correlation id) the updater acted on has exactly one terminal event and no event type
//! twice; successes only ever move the container to a newer release (v1 < v2 < v4 < v5 ...:
//! `docker build` FROM steward-test/app:v2 plus a label; v3 is the broken one,
//! steward-test/app:v3 with a HEALTHCHECK that gives up after one probe, and never passes the
//! gate) and the container runs the last one succeeded (one container under the name,
//! running); no container is left under a swap name; every record is terminal with an empty
//! outbox. Mail: every outcome is notified in exactly one message, every message recorded as
//! sent arrived, and a message arrives twice only after a notifier died, as the same message
//! (same `Message-ID` and text). After a removal the name may be empty, or held by the one
//! container an interrupted swap had started.
//!
//! Each seed has its own namespace on a private nats-server (one per test function, so
//! restarting it disturbs no other test) and its own app; seeds run in two test functions
//! (odd, even). A failing seed prints its actions and how to replay it:
//!
//! - `STEWARD_CAMPAIGN_SEEDS=N`: run seeds 1..=N (default 50);
//! - `STEWARD_CAMPAIGN_SEED=N`: run only seed N;
//! - `STEWARD_CAMPAIGN_FIRST=F`: start at seed F instead of 1 (`scripts/campaign.sh`).
//!
//! Timing decisions (gaps, the moment of a kill) are seeded too, but what the updater is doing
//! at that moment is not: a replay repeats the actions exactly, the interleaving closely.

use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use steward_bus::{Bus, ReplayQuery, StateStore};
use steward_events::records::{
    QueuedNews, UpdateRecord, OUTBOX_BUCKET, UPDATE_BUCKET, UPDATE_QUEUE_BUCKET,
};
use steward_events::{Digest, Event, EventData, ImageUpdated};
use steward_notifier::outbox::{Entry, EntryState};
use steward_system_tests::mail::{
    mails_to, testbed_maildir, testbed_notifier_env, unique_address, Mail,
};
use steward_system_tests::Proc;
use steward_testkit::docker::{docker, push, registry, Container, ImageTag, SwapLeftovers};
use steward_testkit::{bus_config, free_port, unique_name, NatsServer, TestBus};

const TERMINAL: [&str; 3] = ["update.succeeded", "update.rolled_back", "update.failed"];
/// The hard bound of one seed.
const SEED_LIMIT: Duration = Duration::from_secs(60);
/// How long the updater may take to settle after the last action (a leftover waits for the
/// sweep, every 10 s; a nak'd event for its redelivery).
const SETTLE_LIMIT: Duration = Duration::from_secs(35);
/// Healthy releases built on top of v2 (v4, v5, ...): one more than a seed can publish.
const BUILT_RELEASES: u64 = 5;

// ---------------------------------------------------------------------------------------------
// The generator and the plan.

/// SplitMix64: tiny, deterministic, good enough to pick actions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Debug)]
enum Action {
    /// `image.updated` for the next release (the broken one when `broken`).
    Publish { broken: bool },
    /// The `which`-th published `image.updated` (modulo their number) delivered again as is.
    Redeliver { which: u64 },
    /// A copy of the `which`-th published `image.updated` with a fresh id, its original time.
    Replay { which: u64 },
    /// SIGKILL the updater after `after_ms`, and start it again.
    Kill { after_ms: u64 },
    /// Restart the updater set to abort at failpoint `point` (`name=N`: its N-th hit).
    Abort { point: String },
    /// Kill the NATS server, wait `down_ms`, start it again on the same store.
    RestartNats { down_ms: u64 },
    /// `docker rm -f` every container of the app (the name and the swap names).
    Remove,
    /// SIGKILL the notifier after `after_ms`, and start it again.
    KillNotifier { after_ms: u64 },
    /// Restart the notifier set to abort at its failpoint `point`.
    AbortNotifier { point: &'static str },
}

/// The notifier's points a delivery passes (`notify_crash.rs` kills each of them).
const NOTIFIER_POINTS: [&str; 5] =
    ["notify:queued", "notify:sending", "notify:delivered", "notify:published", "notify:recorded"];

/// What seed `seed` does: (milliseconds to wait before, action). The first action publishes.
fn plan(seed: u64, points: &[String]) -> Vec<(u64, Action)> {
    let mut rng = Rng(seed);
    let count = 3 + rng.below(4);
    (0..count)
        .map(|i| {
            let gap = rng.below(800);
            let roll = if i == 0 { 0 } else { rng.below(100) };
            let action = match roll {
                0..=29 => Action::Publish { broken: rng.below(6) == 0 },
                30..=38 => Action::Redeliver { which: rng.below(8) },
                39..=47 => Action::Replay { which: rng.below(8) },
                48..=59 => Action::Kill { after_ms: rng.below(2500) },
                60..=71 => {
                    Action::Abort { point: points[rng.below(points.len() as u64) as usize].clone() }
                }
                72..=77 => Action::KillNotifier { after_ms: rng.below(2500) },
                78..=83 => Action::AbortNotifier {
                    point: NOTIFIER_POINTS[rng.below(NOTIFIER_POINTS.len() as u64) as usize],
                },
                84..=94 => Action::RestartNats { down_ms: 100 + rng.below(1500) },
                _ => Action::Remove,
            };
            (gap, action)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// What the seeds of one test function share: a NATS server, a repository, the releases.

/// A release pushed to the bed's repository.
#[derive(Clone, Debug)]
struct Release {
    /// `v1`, `v2`, `v3` (broken), `v4`, ...
    label: String,
    /// Order: the container may only move to a higher rank.
    rank: u64,
    digest: String,
    /// The local image id (what `docker inspect -f {{.Image}}` shows for a container).
    image_id: String,
    broken: bool,
}

struct Bed {
    nats: Mutex<NatsServer>,
    repository: String,
    v1: Release,
    /// v2, v4, v5, ... in order.
    healthy: Vec<Release>,
    v3: Release,
    points: Vec<String>,
    _built: Vec<BuiltImage>,
    _repository: ImageTag,
}

/// A locally built image, removed when dropped.
struct BuiltImage(String);

impl Drop for BuiltImage {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", &self.0]).output();
    }
}

fn image_id(image: &str) -> String {
    docker(&["image", "inspect", "-f", "{{.Id}}", image])
}

/// Pushes local image `local` to `repository` (under a scratch tag, removed again so nothing
/// but the updater ever changes a tag a container is created from).
fn push_release(local: &str, repository: &str, label: &str, rank: u64, broken: bool) -> Release {
    let tag = format!("{repository}:push-{label}");
    docker(&["tag", local, &tag]);
    let digest = push(&tag);
    docker(&["rmi", "--no-prune", &tag]);
    Release { label: label.into(), rank, digest, image_id: image_id(local), broken }
}

/// Builds `dockerfile` (no context) as `tag`.
fn build_release(tag: &str, dockerfile: &str) {
    let mut build = Command::new("docker")
        .args(["build", "-q", "-t", tag, "-"])
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker build");
    build.stdin.take().expect("stdin").write_all(dockerfile.as_bytes()).expect("write");
    let out = build.wait_with_output().expect("build");
    assert!(out.status.success(), "docker build: {}", String::from_utf8_lossy(&out.stderr));
}

impl Bed {
    async fn new() -> Self {
        let nats = NatsServer::start();
        let repository = format!("{}/{}", registry(), unique_name("steward-test/campaign"));
        let guard = ImageTag(format!("{repository}:none"));
        let v1 = push_release("steward-test/app:v1", &repository, "v1", 1, false);
        let unique = unique_name("r");
        // v3 never answers; its HEALTHCHECK says so after one probe instead of after the
        // image's start period and three retries.
        let broken = format!("steward-test/campaign-release:{unique}-v3");
        build_release(
            &broken,
            "FROM steward-test/app:v3\nHEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD wget -q -O /dev/null http://127.0.0.1:8080/ || exit 1\n",
        );
        let mut built = vec![BuiltImage(broken.clone())];
        let v3 = push_release(&broken, &repository, "v3", 3, true);
        let mut healthy = vec![push_release("steward-test/app:v2", &repository, "v2", 2, false)];
        for rank in 4..4 + BUILT_RELEASES {
            let local = format!("steward-test/campaign-release:{unique}-v{rank}");
            let dockerfile =
                format!("FROM steward-test/app:v2\nLABEL steward.test.release={unique}-v{rank}\n");
            build_release(&local, &dockerfile);
            built.push(BuiltImage(local.clone()));
            healthy.push(push_release(&local, &repository, &format!("v{rank}"), rank, false));
        }
        let mut bed = Self {
            nats: Mutex::new(nats),
            repository,
            v1,
            healthy,
            v3,
            points: vec![],
            _built: built,
            _repository: guard,
        };
        bed.points = POINTS.get_or_init(|| discover(&bed)).await.clone();
        bed
    }

    fn url(&self) -> String {
        self.nats.lock().unwrap_or_else(|p| p.into_inner()).url()
    }

    fn release_of_image(&self, id: &str) -> Option<&Release> {
        std::iter::once(&self.v1)
            .chain(&self.healthy)
            .chain(std::iter::once(&self.v3))
            .find(|r| r.image_id == id)
    }

    fn release_of_digest(&self, digest: &str) -> Option<&Release> {
        std::iter::once(&self.v1)
            .chain(&self.healthy)
            .chain(std::iter::once(&self.v3))
            .find(|r| r.digest == digest)
    }
}

/// The failpoints, found once per test binary.
static POINTS: tokio::sync::OnceCell<Vec<String>> = tokio::sync::OnceCell::const_new();

/// The points a clean update (to v2) and a clean rollback (to the broken v3) pass, as kill
/// specs (`name=n`: the n-th hit in the process), sorted.
async fn discover(bed: &Bed) -> Vec<String> {
    let notes = Notes::default();
    let bus = TestBus::with_config(bus_config(&bed.url(), "campfind")).await;
    let app = App::start(bed, "find");
    let mut updater = Service::updater(bed, &bus, Some(""), &notes);
    updater.wait_consuming().await;
    for to in [&bed.healthy[0], &bed.v3] {
        let from = if to.broken { &bed.healthy[0] } else { &bed.v1 };
        let event = image_updated(&app, &from.digest, &to.digest);
        bus.publish(&event).await.expect("publish");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let all = events(&bus).await;
            if flow_of(&all, event.correlation_id).iter().any(|t| TERMINAL.contains(t)) {
                break;
            }
            assert!(Instant::now() < deadline, "discovery: no outcome:\n{}", updater.proc.logs());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut specs = steward_system_tests::failpoints_passed(&updater.proc.logs());
    specs.sort();
    specs.dedup();
    assert!(specs.len() >= 10, "too few failpoints found: {specs:?}\n{}", updater.proc.logs());
    eprintln!("campaign: {} failpoints: {specs:?}", specs.len());
    specs
}

// ---------------------------------------------------------------------------------------------
// One seed's pieces.

/// The seed's action log and the logs of every updater it ran.
#[derive(Default)]
struct Notes {
    actions: Mutex<Vec<String>>,
    logs: Mutex<String>,
    phases: Mutex<String>,
}

impl Notes {
    fn action(&self, what: String) {
        self.actions.lock().unwrap_or_else(|p| p.into_inner()).push(what);
    }

    /// `+GAP action, ...`.
    fn actions(&self) -> String {
        let actions = self.actions.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for a in actions.iter() {
            out.push_str(a);
            out.push_str(if a.starts_with('+') { " " } else { ", " });
        }
        out.trim_end_matches([',', ' ']).to_owned()
    }

    fn phases(&self, phases: String) {
        *self.phases.lock().unwrap_or_else(|p| p.into_inner()) = phases;
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The app container of one seed, on tag `REPOSITORY:sSEED`.
struct App {
    name: String,
    image: String,
    _leftovers: SwapLeftovers,
    _c: Container,
    _tag: LocalTag,
}

/// A local tag removed when dropped.
struct LocalTag(String);

impl Drop for LocalTag {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "--no-prune", &self.0]).output();
    }
}

impl App {
    fn start(bed: &Bed, tag: &str) -> Self {
        let image = format!("{}:{tag}", bed.repository);
        docker(&["tag", "steward-test/app:v1", &image]);
        let name = unique_name(&format!("camp-{tag}"));
        let tag = LocalTag(image.clone());
        let leftovers = SwapLeftovers(name.clone());
        let c = Container::run(
            &name,
            &[
                "--label",
                "steward.enable=true",
                "--label",
                "steward.update.policy=automatic",
                "--label",
                "steward.update.backup=false",
                &image,
            ],
        );
        Self { name, image, _leftovers: leftovers, _c: c, _tag: tag }
    }
}

/// A service process (the updater or the notifier); its logs go to the seed's notes when it
/// is dropped.
struct Service<'a> {
    binary: &'static str,
    proc: Proc,
    port: u16,
    failpoint: Option<String>,
    notes: &'a Notes,
}

impl<'a> Service<'a> {
    fn start(
        binary: &'static str,
        bed: &Bed,
        bus: &Bus,
        settings: Vec<(&'static str, String)>,
        failpoints: Option<&str>,
        notes: &'a Notes,
    ) -> Self {
        let ns = bus.namespace();
        let port = free_port();
        let mut env = vec![
            ("STEWARD_NATS_URL", bed.url()),
            ("STEWARD_STREAM", ns.stream.clone()),
            ("STEWARD_SUBJECT_PREFIX", ns.prefix.clone()),
            ("STEWARD_HTTP_ADDR", format!("127.0.0.1:{port}")),
            ("STEWARD_ACK_WAIT", "2s".into()),
            ("STEWARD_SHUTDOWN_GRACE", "10s".into()),
        ];
        env.extend(settings);
        if let Some(points) = failpoints {
            env.push(("STEWARD_FAILPOINTS", points.to_owned()));
        }
        let proc = Proc::start(binary, &env);
        let failpoint = failpoints.filter(|p| !p.is_empty()).map(str::to_owned);
        Self { binary, proc, port, failpoint, notes }
    }

    fn updater(bed: &Bed, bus: &Bus, failpoints: Option<&str>, notes: &'a Notes) -> Self {
        let settings =
            vec![("STEWARD_HEALTH_TIMEOUT", "30s".into()), ("STEWARD_HEALTH_GRACE", "1s".into())];
        Self::start("steward-updater", bed, bus, settings, failpoints, notes)
    }

    /// A notifier mailing `to` through the test bed's SMTP server.
    fn notifier(
        bed: &Bed,
        bus: &Bus,
        to: &str,
        failpoints: Option<&str>,
        notes: &'a Notes,
    ) -> Self {
        Self::start("steward-notifier", bed, bus, testbed_notifier_env(to), failpoints, notes)
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.child.try_wait().ok().flatten()
    }

    /// Why the process is gone, if it is.
    fn died(&mut self) -> Option<String> {
        let status = self.exited()?;
        let logs = self.proc.logs();
        Some(
            logs.lines()
                .find_map(|l| l.strip_prefix("failpoint: ").filter(|l| l.contains(": aborting")))
                .map(|l| format!("aborted at {l}"))
                .unwrap_or_else(|| format!("exited: {status}")),
        )
    }

    async fn wait_consuming(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.proc.logs().contains("\"consuming\"") {
            if let Some(status) = self.exited() {
                panic!("{} exited at start ({status})", self.binary);
            }
            assert!(Instant::now() < deadline, "{} never consumed", self.binary);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Service<'_> {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        let mut logs = self.notes.logs.lock().unwrap_or_else(|p| p.into_inner());
        let failpoint = self.failpoint.as_deref().unwrap_or("none");
        logs.push_str(&format!(
            "----- {} pid {} (failpoint {failpoint}) -----\n",
            self.binary,
            self.proc.child.id()
        ));
        logs.push_str(&self.proc.logs());
    }
}

fn image_updated(app: &App, from: &str, to: &str) -> Event {
    Event::new(
        "steward-watcher/campaign",
        ImageUpdated {
            container: app.name.clone(),
            image: app.image.clone(),
            current_digest: Digest::parse(from).expect("digest"),
            new_digest: Digest::parse(to).expect("digest"),
            new_tag: None,
            policy: None,
            versions: Default::default(),
        },
    )
}

/// Every event in the namespace (retried while the server restarts), plus the number of
/// dead letters.
async fn events_and_dead_letters(bus: &Bus) -> (Vec<Event>, usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = async {
            let mut replay = bus.replay(ReplayQuery::default()).await?;
            let (mut out, mut dead) = (vec![], 0);
            while let Some(item) = replay.next().await {
                let item = item?;
                if item.dead_letter_reason.is_some() || item.event_type.starts_with("dlq.") {
                    dead += 1;
                } else if let Ok(event) = item.event {
                    out.push(event);
                }
            }
            Ok::<_, steward_bus::BusError>((out, dead))
        };
        match attempt.await {
            Ok(found) => return found,
            Err(e) if Instant::now() < deadline => {
                eprintln!("campaign: replay: {e}; again");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("replay: {e}"),
        }
    }
}

async fn events(bus: &Bus) -> Vec<Event> {
    events_and_dead_letters(bus).await.0
}

fn flow_of(all: &[Event], correlation: uuid::Uuid) -> Vec<&'static str> {
    all.iter().filter(|e| e.correlation_id == correlation).map(Event::event_type).collect()
}

/// `(num_pending, num_ack_pending)` of `consumer`; `None` when it cannot be read.
async fn consumer_backlog(bus: &Bus, consumer: &str) -> Option<(u64, u64)> {
    let subject = format!("$JS.API.CONSUMER.INFO.{}.{consumer}", bus.namespace().stream);
    let reply = tokio::time::timeout(
        Duration::from_secs(2),
        bus.raw_client().request(subject, Vec::<u8>::new().into()),
    )
    .await
    .ok()?
    .ok()?;
    let info: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
    Some((info.get("num_pending")?.as_u64()?, info.get("num_ack_pending")?.as_u64()?))
}

/// Every record of the namespace (`None` while the bucket cannot be read).
async fn records(bus: &Bus) -> Option<Vec<UpdateRecord>> {
    let store: StateStore<UpdateRecord> = StateStore::open(bus, UPDATE_BUCKET).await.ok()?;
    let mut out = vec![];
    for key in store.keys().await.ok()? {
        out.push(store.get(&key).await.ok()??.value);
    }
    Some(out)
}

/// How many newer images wait for an update in progress (`None` while unreadable).
async fn queued(bus: &Bus) -> Option<usize> {
    let store: StateStore<QueuedNews> = StateStore::open(bus, UPDATE_QUEUE_BUCKET).await.ok()?;
    Some(store.keys().await.ok()?.len())
}

/// Containers whose name starts with `name` (the name and the swap names), or that carry the
/// swap label for it: (name, running, image id).
fn containers_of(name: &str) -> Vec<(String, bool, String)> {
    let by_name = docker(&["ps", "-a", "--format", "{{.Names}}"]);
    let by_label = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=steward.swap.of={name}"),
        "--format",
        "{{.Names}}",
    ]);
    let mut names: Vec<&str> = by_name
        .lines()
        .filter(|n| n.starts_with(name))
        .chain(by_label.lines())
        .filter(|n| !n.is_empty())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .filter_map(|n| {
            let out = Command::new("docker")
                .args(["inspect", "-f", "{{.State.Running}} {{.Image}}", n])
                .output()
                .ok()?;
            let out = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let (running, image) = out.split_once(' ')?;
            Some((n.to_owned(), running == "true", image.to_owned()))
        })
        .collect()
}

async fn readyz(port: u16) -> bool {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("http");
    client
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

// ---------------------------------------------------------------------------------------------
// One seed.

/// Fields drop in order: the updater goes first, then the app's containers, then the namespace.
struct Run<'a> {
    updater: Option<Service<'a>>,
    notifier: Option<Service<'a>>,
    bed: &'a Bed,
    app: App,
    bus: TestBus,
    notes: &'a Notes,
    /// What the test published (first publications only), in order.
    published: Vec<Event>,
    /// Releases published so far (the next healthy one is `healthy[next]`).
    next: usize,
    removed: bool,
    /// The notifier's recipient (unique to the seed).
    to: String,
    /// Whether a notifier died in the seed: only then may a message come twice (the same
    /// message, when the server had accepted it and the outbox did not say so yet).
    notifier_died: bool,
}

impl<'a> Run<'a> {
    fn start_updater(&mut self, failpoints: Option<&str>) {
        self.updater = None;
        self.updater = Some(Service::updater(self.bed, &self.bus, failpoints, self.notes));
    }

    fn start_notifier(&mut self, failpoints: Option<&str>) {
        if self.notifier.take().is_some() {
            self.notifier_died = true;
        }
        self.notifier =
            Some(Service::notifier(self.bed, &self.bus, &self.to, failpoints, self.notes));
    }

    /// A dead service is started again (without failpoints), as a restart policy would.
    fn supervise(&mut self) {
        let Some(u) = self.updater.as_mut() else { return self.start_updater(None) };
        if let Some(why) = u.died() {
            self.notes.action(format!("(updater {why}; restarted)"));
            self.start_updater(None);
        }
        let Some(n) = self.notifier.as_mut() else { return self.start_notifier(None) };
        if let Some(why) = n.died() {
            self.notes.action(format!("(notifier {why}; restarted)"));
            self.start_notifier(None);
        }
    }

    /// The release the container under the name runs, if one of ours.
    fn running(&self) -> Option<&'a Release> {
        let out = Command::new("docker")
            .args(["inspect", "-f", "{{.Image}}", &self.app.name])
            .output()
            .ok()?;
        self.bed.release_of_image(String::from_utf8_lossy(&out.stdout).trim())
    }

    async fn sleep_supervised(&mut self, ms: u64) {
        let until = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < until {
            self.supervise();
            let left = until.saturating_duration_since(Instant::now());
            tokio::time::sleep(left.min(Duration::from_millis(100))).await;
        }
    }

    async fn act(&mut self, action: &Action) {
        match action {
            Action::Publish { broken } => {
                let to = if *broken {
                    self.bed.v3.clone()
                } else {
                    let r = self.bed.healthy[self.next.min(self.bed.healthy.len() - 1)].clone();
                    self.next += 1;
                    r
                };
                let from = self.running().unwrap_or(&self.bed.v1).clone();
                let event = image_updated(&self.app, &from.digest, &to.digest);
                self.notes.action(format!(
                    "publish {}->{} ({})",
                    from.label,
                    to.label,
                    short(event.id)
                ));
                self.bus.publish(&event).await.expect("publish image.updated");
                self.published.push(event);
            }
            Action::Redeliver { which } => {
                let Some(event) = self.pick(*which) else {
                    return self.notes.action("redeliver (nothing published)".into());
                };
                self.notes.action(format!("redeliver {}", short(event.id)));
                // Without a Nats-Msg-Id the stream stores it again: the consumer delivers the
                // same event (id, payload) a second time.
                let subject = self.bus.namespace().subject(event.event_type());
                let payload = event.encode().expect("encode");
                let client = self.bus.raw_client();
                // The client may still be reconnecting after a NATS restart.
                let deadline = Instant::now() + Duration::from_secs(15);
                loop {
                    let sent = match client.publish(subject.clone(), payload.clone().into()).await {
                        Ok(()) => client.flush().await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    match sent {
                        Ok(()) => break,
                        Err(e) if Instant::now() < deadline => {
                            eprintln!("campaign: redeliver: {e}; again");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => panic!("redeliver: {e}"),
                    }
                }
            }
            Action::Replay { which } => {
                let Some(original) = self.pick(*which) else {
                    return self.notes.action("replay (nothing published)".into());
                };
                let mut copy = Event::new(original.source.clone(), original.data.clone());
                // A replayed copy carries its original's time: the very same instant (which
                // made the updater claim the original's flow a second time, seeds 76 and 109,
                // until a tie counted as old news), or with `STEWARD_CAMPAIGN_REPLAY_EARLIER=1`
                // a microsecond older.
                copy.time = original.time;
                if earlier_replays() {
                    copy.time = original.time - time::Duration::microseconds(1);
                }
                self.notes.action(format!("replay {} as {}", short(original.id), short(copy.id)));
                self.bus.publish(&copy).await.expect("publish replay");
            }
            Action::Kill { after_ms } => {
                self.sleep_supervised(*after_ms).await;
                self.notes.action(format!("kill -9 updater after {after_ms}ms"));
                self.start_updater(None);
            }
            Action::Abort { point } => {
                self.notes.action(format!("kill -9 updater; restart to abort at {point}"));
                self.start_updater(Some(point));
            }
            Action::RestartNats { down_ms } => {
                self.notes.action(format!("restart NATS ({down_ms}ms down)"));
                self.bed.nats.lock().unwrap_or_else(|p| p.into_inner()).kill();
                tokio::time::sleep(Duration::from_millis(*down_ms)).await;
                self.bed.nats.lock().unwrap_or_else(|p| p.into_inner()).start_again();
            }
            Action::KillNotifier { after_ms } => {
                self.sleep_supervised(*after_ms).await;
                self.notes.action(format!("kill -9 notifier after {after_ms}ms"));
                self.start_notifier(None);
            }
            Action::AbortNotifier { point } => {
                self.notes.action(format!("kill -9 notifier; restart to abort at {point}"));
                self.start_notifier(Some(point));
            }
            Action::Remove => {
                let found = containers_of(&self.app.name);
                self.notes.action(format!("docker rm -f {} containers", found.len()));
                for (name, _, _) in found {
                    let _ = Command::new("docker").args(["rm", "-f", &name]).output();
                }
                self.removed = true;
            }
        }
    }

    fn pick(&self, which: u64) -> Option<Event> {
        let n = self.published.len() as u64;
        (n > 0).then(|| self.published[(which % n) as usize].clone())
    }

    /// What keeps the seed from being settled, or `None`.
    async fn unsettled(&mut self) -> Option<String> {
        for s in [self.updater.as_ref()?, self.notifier.as_ref()?] {
            if !s.proc.logs().contains("\"consuming\"") {
                return Some(format!("{} is not consuming yet", s.binary));
            }
        }
        for consumer in ["updater", "notifier"] {
            match consumer_backlog(&self.bus, consumer).await {
                Some((0, 0)) => {}
                Some((pending, acks)) => {
                    return Some(format!("{consumer}: {pending} pending, {acks} unacknowledged"))
                }
                None => return Some(format!("{consumer}: consumer info unavailable")),
            }
        }
        match outbox(&self.bus).await {
            Some(entries) if entries.iter().all(|e| e.state != EntryState::Queued) => {}
            Some(_) => return Some("notifications still queued".into()),
            None => return Some("the outbox is unavailable".into()),
        }
        let Some(records) = records(&self.bus).await else {
            return Some("records unavailable".into());
        };
        if let Some(r) = records.iter().find(|r| !r.step.is_terminal() || !r.outbox.is_empty()) {
            return Some(format!("record {:?}, {} in its outbox", r.step, r.outbox.len()));
        }
        match queued(&self.bus).await {
            Some(0) => {}
            Some(n) => return Some(format!("{n} newer image(s) wait for an update to end")),
            None => return Some("the update queue is unavailable".into()),
        }
        let found = containers_of(&self.app.name);
        let strays: Vec<&String> =
            found.iter().map(|(n, _, _)| n).filter(|n| **n != self.app.name).collect();
        if !strays.is_empty() {
            return Some(format!("swap containers left: {strays:?}"));
        }
        if !self.removed && !found.iter().any(|(n, running, _)| *n == self.app.name && *running) {
            return Some(format!("{} is not running: {found:?}", self.app.name));
        }
        None
    }

    async fn settle(&mut self) {
        self.settle_once().await;
        // A process still armed may die after the state settled (at a point past what is
        // checked, e.g. the notifier's `notify:recorded`): clean ones take over, and the
        // seed settles again.
        let armed = |s: &Option<Service>| s.as_ref().is_some_and(|s| s.failpoint.is_some());
        let (updater, notifier) = (armed(&self.updater), armed(&self.notifier));
        if updater {
            self.notes.action("(armed updater replaced)".into());
            self.start_updater(None);
        }
        if notifier {
            self.notes.action("(armed notifier replaced)".into());
            self.start_notifier(None);
        }
        if updater || notifier {
            self.settle_once().await;
        }
    }

    async fn settle_once(&mut self) {
        let deadline = Instant::now() + SETTLE_LIMIT;
        loop {
            self.supervise();
            let Some(why) = self.unsettled().await else { return };
            assert!(Instant::now() < deadline, "not settled within {SETTLE_LIMIT:?}: {why}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The invariants; panics naming the first one that does not hold.
    async fn check(&mut self) {
        // The services stop on SIGTERM, and fresh ones start, are ready, and change nothing.
        let before = events(&self.bus).await.len();
        let mails_before = mails_to(&testbed_maildir(), &self.to).len();
        for s in [self.updater.as_mut(), self.notifier.as_mut()].into_iter().flatten() {
            let code = s.proc.terminate(Duration::from_secs(20));
            assert_eq!(code, Some(0), "{} did not stop cleanly on SIGTERM", s.binary);
        }
        self.start_updater(None);
        self.notifier = None;
        self.notifier = Some(Service::notifier(self.bed, &self.bus, &self.to, None, self.notes));
        for s in [self.updater.as_mut(), self.notifier.as_mut()].into_iter().flatten() {
            s.wait_consuming().await;
            let deadline = Instant::now() + Duration::from_secs(10);
            while !readyz(s.port).await {
                assert!(Instant::now() < deadline, "the restarted {} is not ready", s.binary);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // Longer than the notifier's group window: whatever it would send, it has sent.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if let Some(why) = self.unsettled().await {
            panic!("fresh services unsettled things: {why}");
        }
        let (all, dead) = events_and_dead_letters(&self.bus).await;
        assert_eq!(all.len(), before, "fresh services published events");
        let mails = mails_to(&testbed_maildir(), &self.to);
        assert_eq!(mails.len(), mails_before, "a fresh notifier mailed");
        if dead > 0 {
            self.notes.action(format!("({dead} dead letters)"));
        }

        // Flows: exactly one terminal event when the updater acted, no event type twice.
        let mut flows: BTreeMap<uuid::Uuid, Vec<&Event>> = BTreeMap::new();
        for e in &all {
            flows.entry(e.correlation_id).or_default().push(e);
        }
        let mut succeeded = vec![];
        for (correlation, flow) in &flows {
            let news: HashSet<uuid::Uuid> = flow
                .iter()
                .filter(|e| matches!(e.data, EventData::ImageUpdated(_)))
                .map(|e| e.id)
                .collect();
            let types: Vec<&str> = flow.iter().map(|e| e.event_type()).collect();
            assert_eq!(news.len(), 1, "flow {correlation}: not one image.updated: {types:?}");
            let own: Vec<&str> = types.iter().copied().filter(|t| *t != "image.updated").collect();
            let mut seen = HashSet::new();
            for t in &own {
                assert!(seen.insert(*t), "flow {correlation}: {t} twice: {types:?}");
            }
            let terminal = own.iter().filter(|t| TERMINAL.contains(t)).count();
            assert!(
                own.is_empty() || terminal == 1,
                "flow {correlation}: {terminal} terminal events: {types:?}"
            );
            succeeded.extend(flow.iter().filter_map(|e| match &e.data {
                EventData::UpdateSucceeded(s) => Some((e, s.to_digest.to_string())),
                _ => None,
            }));
        }
        // Successes move forward only, never to the broken release.
        succeeded.sort_by_key(|(e, _)| e.time);
        let mut rank = self.bed.v1.rank;
        let mut last = &self.bed.v1;
        for (e, digest) in &succeeded {
            let r = self
                .bed
                .release_of_digest(digest)
                .unwrap_or_else(|| panic!("update.succeeded {} to an unknown digest", e.id));
            assert!(!r.broken, "update.succeeded {} to the broken {}", e.id, r.label);
            assert!(r.rank > rank, "update.succeeded {} to {} after {}", e.id, r.label, last.label);
            (rank, last) = (r.rank, r);
        }

        // Containers: one under the name, running the last release succeeded.
        let found = containers_of(&self.app.name);
        let names: Vec<&String> = found.iter().map(|(n, _, _)| n).collect();
        if self.removed {
            assert!(names.len() <= 1, "containers after a removal: {names:?}");
        } else {
            assert_eq!(names, [&self.app.name], "exactly one container, no swap names");
            let running = self.running().map(|r| r.label.clone());
            assert_eq!(
                running.as_deref(),
                Some(last.label.as_str()),
                "runs another release than the last one succeeded"
            );
        }
        self.check_mail(&all, &mails).await;
        for (name, running, image) in &found {
            assert!(*running, "{name} is not running");
            let r = self.bed.release_of_image(image);
            // After a removal, a new container the interrupted swap had started stays, with
            // update.failed saying it was started without its health gate.
            assert!(
                r.is_some_and(|r| !r.broken || self.removed),
                "{name} runs {:?}",
                r.map(|r| &r.label)
            );
        }
    }
}

impl Run<'_> {
    /// Every outcome notified in exactly one message; every message arrived; a message twice
    /// only after a notifier died (and then the same message: same `Message-ID`).
    async fn check_mail(&self, all: &[Event], mails: &[Mail]) {
        let entries = outbox(&self.bus).await.expect("the outbox");
        let outcomes = all.iter().filter(|e| TERMINAL.contains(&e.event_type())).count();
        assert_eq!(entries.len(), outcomes, "not one notification per outcome");
        let mut marks = HashSet::new();
        for e in &entries {
            assert_eq!(e.state, EntryState::Sent, "a notification not sent: {e:?}");
            let mark =
                e.message.as_ref().unwrap_or_else(|| panic!("sent without a message: {e:?}"));
            // The parsed header has no angle brackets.
            marks.insert(mark.message_id.trim_matches(['<', '>']).to_owned());
        }
        let mut arrived: BTreeMap<String, Vec<&Mail>> = BTreeMap::new();
        for m in mails {
            let id = m.message_id.clone().unwrap_or_else(|| panic!("a mail without Message-ID"));
            arrived.entry(id).or_default().push(m);
        }
        for (id, copies) in &arrived {
            assert!(
                marks.contains(id),
                "message {id} arrived, but its notifications went out in another message too"
            );
            let bound = if self.notifier_died { 2 } else { 1 };
            assert!(copies.len() <= bound, "message {id} arrived {} times", copies.len());
            assert!(
                copies.iter().all(|m| m.text == copies[0].text),
                "message {id} arrived with different texts"
            );
        }
        for id in &marks {
            assert!(arrived.contains_key(id), "message {id} was recorded as sent, never arrived");
        }
    }
}

/// Every notification of the namespace (`None` while the bucket cannot be read).
async fn outbox(bus: &Bus) -> Option<Vec<Entry>> {
    let store: StateStore<Entry> = StateStore::open(bus, OUTBOX_BUCKET).await.ok()?;
    let mut out = vec![];
    for key in store.keys().await.ok()? {
        out.push(store.get(&key).await.ok()??.value);
    }
    Some(out)
}

fn short(id: uuid::Uuid) -> String {
    id.simple().to_string()[24..].to_owned()
}

async fn seed_run(bed: &Bed, seed: u64, notes: &Notes) {
    let started = Instant::now();
    let bus = TestBus::with_config(bus_config(&bed.url(), &format!("camp{seed}"))).await;
    let app = App::start(bed, &format!("s{seed}"));
    let mut run = Run {
        bed,
        bus,
        app,
        updater: None,
        notifier: None,
        notes,
        published: vec![],
        next: 0,
        removed: false,
        to: unique_address(&format!("camp{seed}")),
        notifier_died: false,
    };
    run.start_updater(None);
    run.start_notifier(None);
    run.updater.as_mut().expect("updater").wait_consuming().await;
    run.notifier.as_mut().expect("notifier").wait_consuming().await;
    let mut phases = vec![("setup", started.elapsed())];
    for (gap, action) in plan(seed, &bed.points) {
        run.sleep_supervised(gap).await;
        notes.action(format!("+{gap}ms"));
        run.act(&action).await;
        run.supervise();
    }
    phases.push(("actions", started.elapsed()));
    run.settle().await;
    phases.push(("settle", started.elapsed()));
    run.check().await;
    phases.push(("check", started.elapsed()));
    let mut last = Duration::ZERO;
    let phases: Vec<String> = phases
        .into_iter()
        .map(|(name, at)| {
            let spent = at - std::mem::replace(&mut last, at);
            format!("{name} {:.1}s", spent.as_secs_f64())
        })
        .collect();
    notes.phases(phases.join(", "));
}

/// Runs one seed within [`SEED_LIMIT`]; the failure (with the actions and the updater's logs)
/// is printed and returned.
async fn seed(bed: &Bed, seed: u64) -> Result<Duration, String> {
    let started = Instant::now();
    let notes = Notes::default();
    let outcome = tokio::time::timeout(
        SEED_LIMIT,
        std::panic::AssertUnwindSafe(seed_run(bed, seed, &notes)).catch_unwind(),
    )
    .await;
    let elapsed = started.elapsed();
    let failure = match outcome {
        Ok(Ok(())) => {
            let phases = notes.phases.lock().unwrap_or_else(|p| p.into_inner()).clone();
            eprintln!(
                "campaign: seed={seed} ok in {:.1}s ({phases}) actions=[{}]",
                elapsed.as_secs_f64(),
                notes.actions()
            );
            return Ok(elapsed);
        }
        Ok(Err(panic)) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panic".into()),
        Err(_) => format!("did not finish within {SEED_LIMIT:?}"),
    };
    let logs = notes.logs();
    let tail: Vec<&str> = logs.lines().rev().take(150).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    let saved = save_logs(seed, &logs);
    let report = format!(
        "campaign: seed={seed} FAILED after {:.1}s: {failure}\n  actions=[{}]\n  replay: STEWARD_CAMPAIGN_SEED={seed} cargo test -p steward-system-tests --test campaign -- --nocapture\n  updater logs: {saved}\n{}",
        elapsed.as_secs_f64(),
        notes.actions(),
        tail.join("\n")
    );
    eprintln!("{report}");
    Err(format!("seed={seed}: {failure}; actions=[{}]", notes.actions()))
}

/// Keeps a failing seed's whole updater logs under `target/campaign-failures/`.
fn save_logs(seed: u64, logs: &str) -> String {
    let dir = steward_system_tests::binary("steward-updater")
        .parent()
        .map(|d| d.join("campaign-failures"))
        .unwrap_or_default();
    let path = dir.join(format!("seed-{seed}.log"));
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, logs)) {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("(not saved: {e})"),
    }
}

/// `STEWARD_CAMPAIGN_REPLAY_EARLIER=1`: replayed copies a microsecond older than their
/// original instead of at its very instant.
fn earlier_replays() -> bool {
    std::env::var("STEWARD_CAMPAIGN_REPLAY_EARLIER").is_ok_and(|v| v == "1")
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(v.trim().parse().unwrap_or_else(|_| panic!("{name}={v}: not a number")))
}

/// The seeds this process runs.
fn seeds() -> Vec<u64> {
    if let Some(one) = env_u64("STEWARD_CAMPAIGN_SEED") {
        return vec![one];
    }
    let first = env_u64("STEWARD_CAMPAIGN_FIRST").unwrap_or(1);
    let count = env_u64("STEWARD_CAMPAIGN_SEEDS").unwrap_or(50);
    (first..first + count).collect()
}

async fn campaign(parity: u64) {
    let mine: Vec<u64> = seeds().into_iter().filter(|s| s % 2 == parity).collect();
    if mine.is_empty() {
        return;
    }
    let started = Instant::now();
    let bed = Bed::new().await;
    eprintln!("campaign: bed ready in {:.1}s", started.elapsed().as_secs_f64());
    let mut failures = vec![];
    let mut times = vec![];
    for s in &mine {
        match seed(&bed, *s).await {
            Ok(t) => times.push(t),
            Err(f) => failures.push(f),
        }
    }
    let total: Duration = times.iter().sum();
    eprintln!(
        "campaign: {} seeds ({}): {} passed, {} failed; {:.1}s in all, {:.1}s a passing seed",
        mine.len(),
        if parity == 1 { "odd" } else { "even" },
        times.len(),
        failures.len(),
        started.elapsed().as_secs_f64(),
        total.as_secs_f64() / times.len().max(1) as f64
    );
    assert!(failures.is_empty(), "failing seeds:\n{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_campaign_odd_seeds() {
    campaign(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_campaign_even_seeds() {
    campaign(0).await;
}
