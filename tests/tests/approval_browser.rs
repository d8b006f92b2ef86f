//! The approval page in a real browser: headless Chromium (Debian's `chromium`) driven through
//! `chromedriver`, with the real watcher, updater and notifier and the test bed's SMTP server.
//! The link comes from the mail; the page renders (its screenshot is decoded and checked) with
//! the new release's facts (tag, version, digest, release date, release-notes link), the
//! keyboard alone reaches and presses Approve, the result page says what happens next, the
//! update completes, and the used and expired links show their pages without buttons.
//!
//! The browser is driven over WebDriver with `fantoccini`: a small, long-maintained client of
//! the W3C protocol (key actions, active element, screenshots are all standard), with no TLS
//! feature needed for a driver on 127.0.0.1. WebDriver rather than the DevTools protocol
//! (`chromiumoxide`) because keyboard input through WebDriver actions is dispatched like a
//! user's, and the test does not depend on one Chromium's DevTools version.
//!
//! No OCR is available here: what the page *says* is read from the DOM (the visible text
//! WebDriver reports); the screenshot proves that it was painted (size, not blank, both
//! buttons' colours where the DOM says the buttons are).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use steward_approval::links::ApprovalLinks;
use steward_bus::{Bus, StateStore};
use steward_events::records::{UpdateRecord, UpdateStep, UPDATE_BUCKET};
use steward_events::{Event, EventData};
use steward_system_tests::apps::{app, pending_in, wait_event};
use steward_system_tests::mail::{testbed_notifier_env, unique_address, wait_mails};
use steward_system_tests::{steward_ok as steward, Proc};
use steward_testkit::docker::{build_and_push, ImageTag};
use steward_testkit::{free_port, http_get, stored_events, unique_name, TestBus};

const SECRET: &str = "9a8b7c6d5e4f30211203f4e5d6c7b8a90a1b2c3d4e5f60718293a4b5c6d7e8f9";
/// The buttons' background colours in approval.html: a painted button shows them.
const APPROVE_RGB: [u8; 3] = [0x2d, 0x6a, 0x4f];
const REJECT_RGB: [u8; 3] = [0x9d, 0x02, 0x08];
/// Generous: the machine has 2 cores shared with other tests.
const PAGE_BOUND: Duration = Duration::from_secs(30);

/// chromedriver and the Chromium it starts: a free port on 127.0.0.1, a fresh temp directory
/// for the profile, HOME and TMPDIR (crash reports and scratch files land there, not in
/// ~/.config), and a process group of their own so everything can be found and ended.
struct Chrome {
    driver: Child,
    port: u16,
    dir: PathBuf,
}

impl Chrome {
    fn start() -> Self {
        for bin in ["chromium", "chromedriver"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {bin}")])
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(found, "{bin} is not installed: run infra/testbed/up.sh");
        }
        let dir = std::env::temp_dir().join(unique_name("steward-browser"));
        std::fs::create_dir_all(dir.join("profile")).expect("browser temp dir");
        let port = free_port();
        // chromedriver listens on loopback only unless given --allowed-ips (then on every
        // interface), so that flag is never passed. It binds 127.0.0.1 and [::1]; the test
        // reaches it on 127.0.0.1 and checks every listening socket below.
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", dir.join("chromedriver.log").display()))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &dir)
            .env("TMPDIR", &dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn chromedriver");
        Self { driver, port, dir }
    }

    /// A WebDriver session on a fresh headless Chromium.
    async fn session(port: u16, dir: PathBuf) -> Client {
        let deadline = Instant::now() + PAGE_BOUND;
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen on 127.0.0.1:{port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut args = vec![
            "--headless=new".to_owned(),
            "--disable-gpu".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            // One CSS pixel per screenshot pixel, so element rectangles index the PNG.
            "--force-device-scale-factor=1".into(),
            "--window-size=1024,768".into(),
            format!("--user-data-dir={}", dir.join("profile").display()),
        ];
        // Chromium refuses to start as root with its sandbox on; the test bed runs as root.
        if std::fs::metadata("/proc/self").is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid() == 0
        }) {
            args.push("--no-sandbox".into());
        }
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), "chrome".into());
        caps.insert("goog:chromeOptions".into(), serde_json::json!({ "args": args }));
        let url = format!("http://127.0.0.1:{port}");
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        let connect = builder.capabilities(caps).connect(&url);
        let client = tokio::time::timeout(Duration::from_secs(60), connect)
            .await
            .expect("a browser session within 60 s")
            .unwrap_or_else(|e| panic!("browser session: {e}"));
        let timeouts = fantoccini::wd::TimeoutConfiguration::new(
            Some(Duration::from_secs(10)),
            Some(PAGE_BOUND),
            Some(Duration::ZERO),
        );
        client.update_timeouts(timeouts).await.expect("timeouts");
        client
    }

    /// Our processes: chromedriver's process group (Chromium and its helpers stay in it) and
    /// whatever names our temp directory (the crash handler starts a session of its own).
    fn processes(&self) -> Vec<u32> {
        let pgid = self.driver.id();
        let dir = self.dir.to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir("/proc") else { return vec![] };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                // "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after ')'.
                let group = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(2)?.parse::<u32>().ok());
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let zombie =
                    stat.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
                !zombie && (group == Some(pgid) || String::from_utf8_lossy(&cmdline).contains(&dir))
            })
            .collect()
    }

    /// The local addresses our processes listen on (TCP).
    fn listening(&self) -> Vec<String> {
        let ours = self.processes();
        let out = Command::new("ss").args(["-Hltnp"]).output().expect("ss");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| ours.iter().any(|p| l.contains(&format!("pid={p},"))))
            .filter_map(|l| l.split_whitespace().nth(3).map(str::to_owned))
            .collect()
    }

    /// Ends the session, then chromedriver; fails if any of our processes or files stays.
    async fn stop(mut self, client: Client) {
        let _ = tokio::time::timeout(Duration::from_secs(20), client.close()).await;
        let _ = Command::new("kill").args(["-TERM", &self.driver.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let _ = self.driver.try_wait();
            let left = self.processes();
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "browser processes left behind: {left:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.driver.wait();
        std::fs::remove_dir_all(&self.dir).expect("remove the browser temp dir");
    }
}

impl Drop for Chrome {
    /// On a failed test: kill by pid whatever of ours is still there, remove the temp dir.
    fn drop(&mut self) {
        for pid in self.processes() {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Presses `keys` one after another (down, up), as a keyboard does.
async fn press(client: &Client, keys: &[Key]) {
    let mut actions = KeyActions::new(unique_name("keyboard"));
    for key in keys {
        actions = actions
            .then(KeyAction::Down { value: char::from(*key) })
            .then(KeyAction::Up { value: char::from(*key) });
    }
    client.perform_actions(actions).await.expect("key actions");
}

/// Types `text` on the keyboard.
async fn type_text(client: &Client, text: &str) {
    let mut actions = KeyActions::new(unique_name("typing"));
    for c in text.chars() {
        actions = actions.then(KeyAction::Down { value: c }).then(KeyAction::Up { value: c });
    }
    client.perform_actions(actions).await.expect("typing");
}

/// Shift+Tab.
async fn press_shift_tab(client: &Client) {
    let actions = KeyActions::new(unique_name("keyboard"))
        .then(KeyAction::Down { value: char::from(Key::Shift) })
        .then(KeyAction::Down { value: char::from(Key::Tab) })
        .then(KeyAction::Up { value: char::from(Key::Tab) })
        .then(KeyAction::Up { value: char::from(Key::Shift) });
    client.perform_actions(actions).await.expect("key actions");
}

/// The focused element, as `tag name=... value=...`.
async fn focused(client: &Client) -> String {
    let e = client.active_element().await.expect("active element");
    format!(
        "{} name={} value={}",
        e.tag_name().await.unwrap_or_default(),
        e.attr("name").await.ok().flatten().unwrap_or_default(),
        e.attr("value").await.ok().flatten().unwrap_or_default(),
    )
}

/// The page's heading and visible text, once its heading is `heading` (bounded).
async fn page_with_heading(client: &Client, heading: &str) -> String {
    let deadline = Instant::now() + PAGE_BOUND;
    loop {
        // Errors while a navigation is under way (stale or missing elements) are retried.
        if let Ok(h1) = client.find(Locator::Css("h1")).await {
            if h1.text().await.is_ok_and(|t| t == heading) {
                if let Ok(body) = client.find(Locator::Css("body")).await {
                    if let Ok(text) = body.text().await {
                        return text;
                    }
                }
            }
        }
        if Instant::now() > deadline {
            let source = client.source().await.unwrap_or_default();
            panic!("no page headed {heading:?} within {PAGE_BOUND:?}: {source}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Number of `button` and `form` elements on the page.
async fn controls(client: &Client) -> (usize, usize) {
    let buttons = client.find_all(Locator::Css("button")).await.expect("buttons").len();
    let forms = client.find_all(Locator::Css("form")).await.expect("forms").len();
    (buttons, forms)
}

/// A decoded screenshot, RGB.
struct Shot {
    width: usize,
    height: usize,
    rgb: Vec<[u8; 3]>,
}

impl Shot {
    async fn take(client: &Client) -> Self {
        let png = client.screenshot().await.expect("screenshot");
        let mut decoder = png::Decoder::new(std::io::Cursor::new(png));
        decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = decoder.read_info().expect("a PNG");
        let mut buf = vec![0; reader.output_buffer_size().expect("frame size")];
        let info = reader.next_frame(&mut buf).expect("a PNG frame");
        let samples = info.color_type.samples();
        assert!(samples >= 3, "a colour screenshot: {:?}", info.color_type);
        let (width, height) = (info.width as usize, info.height as usize);
        let mut rgb = Vec::with_capacity(width * height);
        for row in buf.chunks(info.line_size).take(height) {
            for px in row.chunks(samples).take(width) {
                rgb.push([px[0], px[1], px[2]]);
            }
        }
        Self { width, height, rgb }
    }

    fn near(a: [u8; 3], b: [u8; 3]) -> bool {
        a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 12)
    }

    /// Pixels close to `colour` within `rect` (x, y, w, h in CSS pixels), or everywhere.
    fn count(&self, colour: [u8; 3], rect: Option<(f64, f64, f64, f64)>) -> (usize, usize) {
        let (x0, y0, x1, y1) = match rect {
            Some((x, y, w, h)) => (x as usize, y as usize, (x + w) as usize, (y + h) as usize),
            None => (0, 0, self.width, self.height),
        };
        let (x1, y1) = (x1.min(self.width), y1.min(self.height));
        let mut hits = 0;
        let mut all = 0;
        for y in y0..y1 {
            for x in x0..x1 {
                all += 1;
                hits += usize::from(Self::near(self.rgb[y * self.width + x], colour));
            }
        }
        (hits, all)
    }

    /// A real render of a page: a sensible size, a white page with dark text on it, not one
    /// uniform colour.
    fn assert_rendered(&self, what: &str) {
        assert!(
            (300..=4000).contains(&self.width) && (200..=4000).contains(&self.height),
            "{what}: odd screenshot size {}x{}",
            self.width,
            self.height
        );
        let mut colours: Vec<[u8; 3]> = self.rgb.clone();
        colours.sort_unstable();
        colours.dedup();
        let (white, all) = self.count([255, 255, 255], None);
        let dark = self.rgb.iter().filter(|p| p.iter().all(|c| *c < 90)).count();
        assert!(colours.len() >= 8, "{what}: {} colours only: a blank render", colours.len());
        assert!(white * 2 > all, "{what}: not a white page ({white} of {all} pixels white)");
        assert!(dark >= 200, "{what}: no text painted ({dark} dark pixels)");
    }
}

async fn step(bus: &Bus, container: &str) -> Option<UpdateStep> {
    let records: StateStore<UpdateRecord> =
        StateStore::open(bus, UPDATE_BUCKET).await.expect("records");
    records.get(container).await.expect("get").map(|v| v.value.step)
}

fn decisions(events: &[Event]) -> Vec<&Event> {
    events
        .iter()
        .filter(|e| matches!(e.event_type(), "update.approved" | "update.rejected"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_approval_page_works_in_a_real_browser_with_the_keyboard_alone() {
    let started = Instant::now();
    // The browser starts while the services come up and the mail is on its way.
    let chrome = Chrome::start();
    let session = tokio::spawn(Chrome::session(chrome.port, chrome.dir.clone()));

    let bus = TestBus::new("approvebrowser").await;
    let scope = unique_name("scope");
    let to = unique_address("browser");
    // Declared before the app, so dropped after its container: by then the container runs
    // tag 1.1, and Docker keeps a tag that a container uses.
    let _newer_tag: ImageTag;
    // Tag tracking: the newer release is tag 1.1 of the app's repository (it runs 1.0).
    let app = app(&scope, "manual", &[r"steward.watch.tags=^\d+\.\d+$".to_owned()]);
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let _watcher = Proc::service("steward-watcher", &bus, &[("STEWARD_SCOPE", scope.clone())]);
    let _updater = Proc::service(
        "steward-updater",
        &bus,
        &[
            ("STEWARD_SCOPE", scope.clone()),
            ("STEWARD_HTTP_ADDR", format!("127.0.0.1:{port}")),
            ("STEWARD_PUBLIC_URL", public.clone()),
            ("STEWARD_APPROVAL_SECRET", SECRET.to_owned()),
            ("STEWARD_HEALTH_GRACE", "3s".to_owned()),
        ],
    );
    let _notifier = Proc::service("steward-notifier", &bus, &testbed_notifier_env(&to));

    // The new release says what it is and where it comes from (OCI labels); a label unique to
    // the run keeps another test's cached build from being this one.
    let (repo, _) = app.image.rsplit_once(':').expect("repo:tag");
    let newer = format!("{repo}:1.1");
    _newer_tag = ImageTag(newer.clone());
    let released = "2026-11-20T10:00:00Z";
    let v2 = build_and_push(
        &newer,
        &format!(
            "FROM steward-test/app:v2\nLABEL org.opencontainers.image.version=1.1.0 \
             org.opencontainers.image.created={released} \
             org.opencontainers.image.source=https://github.com/example/app \
             steward.test.run={scope}\n"
        ),
    );
    let notes = "https://github.com/example/app/releases/tag/1.1.0";
    steward(&bus, &["check"]);
    let events = wait_event(&bus, "update.pending", Duration::from_secs(30)).await;
    let pending = pending_in(&events).expect("pending");
    assert_eq!(pending.1.current_digest.to_string(), app.v1);
    assert_eq!(pending.1.new_digest.to_string(), v2);
    assert_eq!(pending.1.new_tag.as_deref(), Some("1.1"));
    let mails = wait_mails(&steward_system_tests::mail::testbed_maildir(), &to, 1, PAGE_BOUND);
    let link = mails[0]
        .text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Approval page: "))
        .unwrap_or_else(|| panic!("no link in the mail: {}", mails[0].text))
        .to_owned();
    assert!(link.starts_with(&format!("{public}/approve/")), "{link}");
    for fact in ["1.1.0", "1.1", v2.as_str(), notes] {
        assert!(mails[0].text.contains(fact), "the mail does not tell {fact}: {}", mails[0].text);
    }

    let client = session.await.expect("browser session task");
    // Everything the browser and its driver listen on is loopback.
    let listening = chrome.listening();
    assert!(
        listening.contains(&format!("127.0.0.1:{}", chrome.port)),
        "chromedriver on 127.0.0.1:{}: {listening:?}",
        chrome.port
    );
    for addr in &listening {
        assert!(
            addr.starts_with("127.0.0.1:") || addr.starts_with("[::1]:"),
            "the browser listens beyond loopback: {addr} ({listening:?})"
        );
    }

    // An expired link (same update, minted with the test's secret two hours ago): its page,
    // no buttons, nothing decided.
    let old = time::OffsetDateTime::now_utc() - Duration::from_secs(7200);
    let (expired, _) = ApprovalLinks::new(
        steward_approval::LinkKind::Update,
        &public,
        SECRET.as_bytes(),
        Duration::from_secs(3600),
    )
    .mint(pending.1.update_id, old);
    client.goto(&expired).await.expect("open the expired link");
    let text = page_with_heading(&client, "Link expired").await;
    assert!(text.contains("expired") && text.contains("Nothing was changed"), "{text}");
    assert!(text.contains("steward approve"), "says what to do instead: {text}");
    assert_eq!(controls(&client).await, (0, 0), "no buttons on the expired page");
    let shot = Shot::take(&client).await;
    shot.assert_rendered("expired page");
    assert!(shot.count(APPROVE_RGB, None).0 < 50, "no Approve button painted");

    // The page: the container, both versions, two buttons, painted.
    client.goto(&link).await.expect("open the link");
    let heading = format!("Update {}?", app.name);
    let text = page_with_heading(&client, &heading).await;
    for needed in [&app.name, &app.v1, &v2, &app.image] {
        assert!(text.contains(needed.as_str()), "the page does not show {needed}: {text}");
    }
    assert!(text.contains("Running now") && text.contains("New version"), "{text}");
    // The new release's facts, each in its row as a person reads it.
    let row = |name: &'static str| {
        let client = client.clone();
        async move {
            let xpath = format!("//tr[th[normalize-space()='{name}']]/td");
            let cell = client.find(Locator::XPath(&xpath)).await;
            cell.unwrap_or_else(|e| panic!("no {name} row: {e}")).text().await.expect("text")
        }
    };
    assert_eq!(row("New version").await, format!("1.1.0 (tag 1.1, {v2})"));
    assert_eq!(row("Running now").await, app.v1);
    let told = row("Released").await;
    assert!(
        told.starts_with(released) && told.ends_with(" days ago)"),
        "the release's date and age: {told}"
    );
    assert_eq!(row("Release notes").await, notes);
    let link_to_notes = client
        .find(Locator::XPath("//tr[th[normalize-space()='Release notes']]/td/a"))
        .await
        .expect("a link to the release notes");
    assert_eq!(link_to_notes.attr("href").await.expect("href").as_deref(), Some(notes));
    let rel = link_to_notes.attr("rel").await.expect("rel").unwrap_or_default();
    assert!(rel.contains("noopener") && rel.contains("noreferrer"), "{rel}");
    assert!(client.title().await.expect("title").contains(&app.name));
    let html = client.find(Locator::Css("html")).await.expect("html");
    assert_eq!(html.attr("lang").await.expect("lang").as_deref(), Some("en"));
    let approve = client.find(Locator::Css("button[value=approve]")).await.expect("Approve");
    let reject = client.find(Locator::Css("button[value=reject]")).await.expect("Reject");
    assert_eq!(approve.text().await.expect("text"), "Approve");
    assert_eq!(reject.text().await.expect("text"), "Reject");
    for b in [&approve, &reject] {
        assert!(b.is_displayed().await.expect("displayed") && b.is_enabled().await.expect("on"));
    }
    let mut shown = vec![];
    for b in client.find_all(Locator::Css("button")).await.expect("buttons") {
        if b.is_displayed().await.expect("displayed") {
            shown.push(b.text().await.expect("text"));
        }
    }
    assert_eq!(shown, ["Approve", "Reject"], "the visible buttons, each with its name");
    // The note field has a label a screen reader announces.
    client
        .find(Locator::XPath("//label[normalize-space()!='' and .//input[@name='reason']]"))
        .await
        .expect("the note field is labelled");
    let shot = Shot::take(&client).await;
    shot.assert_rendered("approval page");
    for (name, button, colour) in
        [("Approve", &approve, APPROVE_RGB), ("Reject", &reject, REJECT_RGB)]
    {
        let rect = button.rectangle().await.expect("rect");
        let (hits, all) = shot.count(colour, Some(rect));
        assert!(all > 200 && hits * 2 > all, "{name} not painted at {rect:?}: {hits} of {all}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(step(&bus, &app.name).await, Some(UpdateStep::Pending), "GET decides nothing");

    // The keyboard alone: Tab from the top reaches the release notes' link, the note field,
    // then Approve, then Reject.
    let mut stops = vec![];
    for _ in 0..10 {
        press(&client, &[Key::Tab]).await;
        stops.push(focused(&client).await);
        if stops.last().is_some_and(|s| s.contains("value=approve")) {
            break;
        }
    }
    assert_eq!(
        stops,
        ["a name= value=", "input name=reason value=", "button name=decision value=approve"],
        "Tab order"
    );
    // Enter in the note field must not submit: it would approve (the form's first button).
    press_shift_tab(&client).await;
    assert_eq!(focused(&client).await, "input name=reason value=");
    type_text(&client, "checked").await;
    press(&client, &[Key::Enter]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    page_with_heading(&client, &heading).await;
    assert_eq!(step(&bus, &app.name).await, Some(UpdateStep::Pending), "Enter in the note");
    press(&client, &[Key::Tab, Key::Tab]).await;
    assert_eq!(focused(&client).await, "button name=decision value=reject");
    press_shift_tab(&client).await;
    assert_eq!(focused(&client).await, "button name=decision value=approve");
    // The focused button shows it (the browser's focus ring is not switched off).
    let approve = client.active_element().await.expect("focused");
    let outline = approve.css_value("outline-style").await.expect("outline");
    let width = approve.css_value("outline-width").await.expect("outline width");
    assert!(outline != "none" && width != "0px", "no visible focus: {outline} {width}");
    press(&client, &[Key::Enter]).await;

    // The result page says what happens next.
    let text = page_with_heading(&client, "Approved").await;
    assert!(
        text.contains("The update starts now") && text.contains("notified of the outcome"),
        "{text}"
    );
    assert_eq!(controls(&client).await, (0, 0), "no buttons after the decision");
    assert_eq!(client.current_url().await.expect("url").as_str(), link, "posted to the link");
    Shot::take(&client).await.assert_rendered("result page");

    // The update completes, approved once, by the page.
    let all = wait_event(&bus, "update.succeeded", Duration::from_secs(60)).await;
    assert!(http_get(app.port).is_some_and(|b| b.contains("app v2")), "the app serves v2");
    let decided = decisions(&all);
    assert_eq!(decided.len(), 1, "{decided:?}");
    assert!(
        matches!(&decided[0].data, EventData::UpdateApproved(a)
            if a.by == "approval-page" && a.update_id == pending.1.update_id),
        "{:?}",
        decided[0]
    );
    assert_eq!(decided[0].correlation_id, pending.0.correlation_id);

    // The same link again: already used, no buttons.
    client.goto(&link).await.expect("open the link again");
    let text = page_with_heading(&client, "Link already used").await;
    assert!(text.contains("already used: approved at") && text.contains(&app.name), "{text}");
    assert_eq!(controls(&client).await, (0, 0), "no buttons on a used link");
    let shot = Shot::take(&client).await;
    shot.assert_rendered("used page");
    assert!(shot.count(APPROVE_RGB, None).0 < 50, "no Approve button painted");
    assert_eq!(decisions(&stored_events(&bus).await).len(), 1, "nothing more decided");

    chrome.stop(client).await;
    let took = started.elapsed();
    eprintln!("approval page in a browser: {took:?}");
}
