//! The test binary's own servers (`steward_testkit::servers`, testcontainers): a child process
//! in `STEWARD_TEST_SERVERS=containers` mode starts all six from the test bed's variables and a
//! `NatsServer` of a test's own, and uses each; the parent checks that they listen on loopback
//! only, SIGKILLs the child, and checks that its containers and directory are gone.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use steward_testkit::docker::docker;
use steward_testkit::{servers, testbed, unique_name, wait_for};

/// Set for the child: it then runs its servers and waits to be killed.
const CHILD: &str = "STEWARD_TEST_SERVERS_CHILD";

#[test]
fn a_binarys_servers_are_its_own_on_loopback_and_go_when_it_is_killed() {
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .args(["--ignored", "--exact", "servers_of_a_child"])
        .env(CHILD, "1")
        .env(servers::MODE_VARIABLE, "containers")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the child");
    let stdout = child.stdout.take().expect("child's stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = vec![];
    let mut run = None;
    let mut own_nats_port = None;
    loop {
        match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(line) if line == "READY" => break,
            Ok(line) => {
                if let Some(port) = line.strip_prefix("NATS ") {
                    own_nats_port = port.parse::<u16>().ok();
                }
                if let Some(rest) = line.strip_prefix("RUN ") {
                    run = rest.split_once(' ').map(|(id, dir)| (id.to_owned(), dir.to_owned()));
                }
                seen.push(line);
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the child did not get ready ({e}); it printed:\n{}", seen.join("\n"));
            }
        }
    }
    let (id, dir) = run.unwrap_or_else(|| panic!("no RUN line from the child: {seen:?}"));
    let filter = format!("label={}={id}", servers::RUN_LABEL);
    let ids = docker(&["ps", "-q", "--filter", &filter]);
    let ids: Vec<&str> = ids.lines().collect();
    assert_eq!(
        ids.len(),
        7,
        "NATS, S3, moto, SMTP, two registries and the test's own NATS run for the child: {ids:?}"
    );
    let host_network = docker(&["ps", "-q", "--filter", &filter, "--filter", "network=host"]);
    let host_network: Vec<&str> = host_network.lines().collect();
    assert_eq!(host_network.len(), 1, "the test's own NATS is on the host's network");
    let own_nats = own_nats_port.expect("the child names its own NATS port");
    let listening = std::process::Command::new("ss")
        .args(["-Htln", &format!("sport = :{own_nats}")])
        .output()
        .expect("run ss");
    let listening = String::from_utf8_lossy(&listening.stdout).into_owned();
    let local: Vec<&str> = listening.lines().filter_map(|l| l.split_whitespace().nth(3)).collect();
    assert_eq!(
        local,
        [format!("127.0.0.1:{own_nats}")],
        "the test's own NATS listens on loopback only"
    );
    for c in ids.iter().filter(|c| !host_network.contains(c)) {
        // What the engine bound, not what was asked for.
        let bindings = docker(&[
            "inspect",
            "-f",
            "{{range $p, $b := .NetworkSettings.Ports}}{{range $b}}{{.HostIp}} {{end}}{{end}}",
            c,
        ]);
        let ips: Vec<&str> = bindings.split_whitespace().collect();
        assert!(
            !ips.is_empty() && ips.iter().all(|ip| *ip == "127.0.0.1"),
            "container {c} publishes on {ips:?}, not on 127.0.0.1 only"
        );
    }
    assert!(std::path::Path::new(&dir).is_dir(), "the run's directory {dir} exists");

    // However the process ends, its servers go: SIGKILL leaves no Drop and no exit handler.
    child.kill().expect("SIGKILL the child");
    let _ = child.wait();
    wait_for("the killed child's containers to be removed", Duration::from_secs(60), || {
        docker(&["ps", "-aq", "--filter", &filter]).trim().is_empty().then_some(())
    });
    wait_for("the killed child's directory to be removed", Duration::from_secs(10), || {
        (!std::path::Path::new(&dir).exists()).then_some(())
    });
}

/// The child's part; runs only when the parent test starts it.
#[tokio::test]
#[ignore = "the child of a_binarys_servers_are_its_own_…, which starts it"]
async fn servers_of_a_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    assert!(servers::in_containers());

    // NATS with JetStream; a stream kept across a stop and start of the container.
    let url = testbed::nats_url();
    assert_eq!(url, format!("nats://127.0.0.1:{}", servers::nats().port));
    store_one(&url).await;
    servers::nats().stop(Duration::from_secs(5));
    assert!(async_nats::connect(&url).await.is_err(), "a stopped server takes no connection");
    servers::nats().start();
    assert_eq!(stored(&url).await, 1, "the stored message is kept");

    // A NatsServer of the test's own, in a container on the host's network: killed (nothing
    // answers), started again with its store, frozen (connections open, nothing answered),
    // let go again.
    let mut own_nats = steward_testkit::NatsServer::start();
    store_one(&own_nats.url()).await;
    own_nats.kill();
    assert!(
        async_nats::connect(own_nats.url()).await.is_err(),
        "a killed server takes no connection"
    );
    own_nats.start_again();
    assert_eq!(stored(&own_nats.url()).await, 1, "its store is kept");
    own_nats.pause();
    let greeting = |url: String| async move {
        let port = url.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).expect("port");
        let mut stream =
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        let mut buf = [0u8; 5];
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::io::AsyncReadExt::read_exact(&mut stream, &mut buf),
        )
        .await
        .map(|r| r.map(|_| buf))
    };
    assert!(greeting(own_nats.url()).await.is_err(), "a paused server answers nothing");
    own_nats.resume();
    let info = greeting(own_nats.url()).await.expect("answers again").expect("read");
    assert_eq!(&info, b"INFO ", "a resumed server greets");

    // moto: S3 with Object Lock.
    let moto = testbed::require("STEWARD_TEST_MOTO_ENDPOINT");
    let moto_config = aws_sdk_s3::Config::builder()
        .behavior_version_latest()
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new("a", "b", None, None, "kit"))
        .endpoint_url(&moto)
        .force_path_style(true)
        .build();
    let moto_client = aws_sdk_s3::Client::from_conf(moto_config);
    let locked = unique_name("kit-lock");
    moto_client
        .create_bucket()
        .bucket(&locked)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .expect("create a bucket with Object Lock");
    let lock = moto_client
        .get_object_lock_configuration()
        .bucket(&locked)
        .send()
        .await
        .expect("the bucket's Object Lock configuration");
    let enabled = lock
        .object_lock_configuration()
        .and_then(|c| c.object_lock_enabled())
        .map(|e| e.as_str().to_owned());
    assert_eq!(enabled.as_deref(), Some("Enabled"));

    // S3 takes the test bed's keys, and keeps a bucket in the run's directory.
    let s3 = testbed::require("STEWARD_TEST_S3_ENDPOINT");
    let credentials = aws_sdk_s3::config::Credentials::new(
        testbed::require("STEWARD_TEST_S3_ACCESS_KEY"),
        testbed::require("STEWARD_TEST_S3_SECRET_KEY"),
        None,
        None,
        "kit",
    );
    let config = aws_sdk_s3::Config::builder()
        .behavior_version_latest()
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(credentials)
        .endpoint_url(&s3)
        .force_path_style(true)
        .build();
    let bucket = unique_name("kit");
    let client = aws_sdk_s3::Client::from_conf(config);
    client.create_bucket().bucket(&bucket).send().await.expect("create a bucket");
    assert!(
        servers::run_dir().join("s3").join(&bucket).is_dir(),
        "the bucket in the run's directory"
    );

    // A server of a test's own: killed, started again on its port, removed when dropped.
    let own_dir = steward_testkit::TempDir::new("own-s3");
    let own = servers::Own::s3(steward_testkit::free_port(), &own_dir.0);
    let answers = |port: u16| {
        steward_testkit::http_get_why(std::net::SocketAddr::from(([127, 0, 0, 1], port)), "/")
    };
    own.kill();
    assert!(answers(own.port).is_err(), "a killed server answers nothing");
    own.start();
    assert!(answers(own.port).is_ok(), "started again on its port");
    let own_id = own.id().to_owned();
    drop(own);
    let left = docker(&["ps", "-aq", "--no-trunc", "--filter", &format!("id={own_id}")]);
    assert!(left.is_empty(), "a dropped server's container is removed: {left}");

    // SMTP: a message lands in the maildir the variable names.
    let to = format!("{}@steward.test", unique_name("kit"));
    let smtp = testbed::require("STEWARD_TEST_SMTP");
    let (host, port) = smtp.rsplit_once(':').expect("host:port");
    let message = lettre::Message::builder()
        .from("kit@steward.test".parse().expect("from"))
        .to(to.parse().expect("to"))
        .subject("kit")
        .body(String::from("hello"))
        .expect("message");
    let transport = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous(host)
        .port(port.parse().expect("port"))
        .build();
    lettre::AsyncTransport::send(&transport, message).await.expect("send");
    let maildir = std::path::PathBuf::from(testbed::require("STEWARD_TEST_MAILDIR"));
    wait_for("the message in the maildir", Duration::from_secs(10), || {
        std::fs::read_dir(maildir.join("new"))
            .ok()?
            .filter_map(Result::ok)
            .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|m| m.contains(&to)))
            .then_some(())
    });

    // The registries: the plain one answers; the other asks for, and takes, the test bed's
    // user and password.
    let client = reqwest::Client::new();
    let plain = testbed::require("STEWARD_TEST_REGISTRY");
    let status = |r: reqwest::Response| r.status().as_u16();
    let get = |host: &str| client.get(format!("http://{host}/v2/"));
    assert_eq!(get(&plain).send().await.map(status).expect("GET /v2/"), 200);
    let auth = testbed::require("STEWARD_TEST_REGISTRY_AUTH");
    assert_eq!(get(&auth).send().await.map(status).expect("GET /v2/"), 401);
    let user = testbed::require("STEWARD_TEST_REGISTRY_USER");
    let password = testbed::require("STEWARD_TEST_REGISTRY_PASSWORD");
    let logged_in = get(&auth).basic_auth(user, Some(password)).send().await;
    assert_eq!(logged_in.map(status).expect("GET /v2/ with the password"), 200);

    // Straight to the process's stdout, which the parent reads (the harness captures prints).
    let mut out = std::io::stdout();
    let own_port = own_nats.url().rsplit(':').next().map(str::to_owned).unwrap_or_default();
    writeln!(out, "NATS {own_port}").expect("stdout");
    writeln!(out, "RUN {} {}", servers::run_id(), servers::run_dir().display()).expect("stdout");
    writeln!(out, "READY").expect("stdout");
    out.flush().expect("stdout");
    // Killed by the parent; the bound only keeps a lost parent from leaving it for ever.
    tokio::time::sleep(Duration::from_secs(300)).await;
    drop(own_nats);
}

/// Makes the stream `KIT` on the NATS server at `url` and stores one message in it.
async fn store_one(url: &str) {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.expect("connect"));
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "KIT".into(),
        subjects: vec!["kit.>".into()],
        ..Default::default()
    })
    .await
    .expect("create a stream");
    js.publish("kit.one", "1".into()).await.expect("publish").await.expect("stored");
}

/// How many messages the stream `KIT` on the NATS server at `url` holds.
async fn stored(url: &str) -> u64 {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.expect("connect again"));
    let mut kept = js.get_stream("KIT").await.expect("the stream after the restart");
    kept.info().await.expect("info").state.messages
}
