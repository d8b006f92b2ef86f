//! The compose project of one environment, through `docker-compose` (Debian's v1 here, the
//! `docker compose` plugin's flags are the same): validation, compose's own per-service
//! configuration hash (what makes compose recreate a container, so "changed" means what it
//! means to compose), the images named, and `up`/`rm` of chosen services only.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::command::{run, CommandError};

/// Compose labels on the containers it makes.
pub const PROJECT_LABEL: &str = "com.docker.compose.project";
/// The service a container belongs to.
pub const SERVICE_LABEL: &str = "com.docker.compose.service";
/// The hash of the service's configuration the container was made from.
pub const HASH_LABEL: &str = "com.docker.compose.config-hash";

/// The compose file a container was made from, as compose labels it.
pub const CONFIG_FILES_LABEL: &str = "com.docker.compose.project.config_files";
/// The project directory a container was made in, as compose labels it.
pub const WORKING_DIR_LABEL: &str = "com.docker.compose.project.working_dir";

/// One environment's project: its name, checkout and compose file; or, to put back what ran
/// before an environment's first deployment, the project as compose labelled its containers.
#[derive(Debug, Clone)]
pub struct Compose {
    /// Project name (`<project>-<env>`).
    pub project: String,
    /// The checkout (compose's working directory: relative paths resolve here).
    pub dir: PathBuf,
    /// The compose files, relative to `dir` (or absolute).
    pub files: Vec<String>,
    /// `--project-directory`, when not the first file's directory (compose's default).
    pub project_directory: Option<PathBuf>,
    /// One command's bound.
    pub timeout: Duration,
}

impl Compose {
    /// `-p PROJECT [--project-directory DIR] -f FILE...`, then `args`.
    fn args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec!["-p", self.project.as_str()];
        if let Some(d) = self.project_directory.as_ref().and_then(|d| d.to_str()) {
            all.extend(["--project-directory", d]);
        }
        for f in &self.files {
            all.extend(["-f", f.as_str()]);
        }
        all.extend_from_slice(args);
        all
    }

    async fn compose(&self, args: &[&str]) -> Result<String, CommandError> {
        Ok(self.compose_output(args).await?.stdout)
    }

    /// `docker-compose ARGS` in the project, what it printed on both streams.
    async fn compose_output(&self, args: &[&str]) -> Result<crate::command::Output, CommandError> {
        run("docker-compose", &self.args(args), Some(&self.dir), self.timeout).await
    }

    /// The normalised configuration (`config`), read once per deployment: compose prints it
    /// only for a file that parses and is a valid project, so it is the validation too, and
    /// the images and labels are read from it (each run of the Python `docker-compose` costs
    /// about a CPU second).
    pub async fn config(&self) -> Result<Config, CommandError> {
        if let Some(missing) = self.files.iter().find(|f| !self.dir.join(f).is_file()) {
            return Err(CommandError {
                command: format!("read {missing}"),
                reason: "no such file in the commit".into(),
                tail: vec![],
                code: None,
            });
        }
        Ok(Config(self.compose(&["config"]).await?))
    }

    /// Each service's configuration hash, as compose computes it (`config --hash=*`).
    pub async fn hashes(&self) -> Result<BTreeMap<String, String>, CommandError> {
        let out = self.compose(&["config", "--hash=*"]).await?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(s, h)| (s.trim().to_owned(), h.trim().to_owned()))
            .filter(|(s, h)| !s.is_empty() && !h.is_empty())
            .collect())
    }

    /// Runs `args` in a throw-away container of `service` (`run --rm --no-deps -T`: the
    /// service's image and configuration, its ports not published, no other service started)
    /// within `timeout`, as the container `name` (the caller removes one a timeout or a kill
    /// left behind: a killed `docker-compose` does not stop it).
    pub async fn run_one_off(
        &self,
        service: &str,
        args: &[String],
        name: &str,
        timeout: Duration,
    ) -> Result<(), CommandError> {
        let mut all = vec!["run", "--rm", "--no-deps", "-T", "--name", name, service];
        all.extend(args.iter().map(String::as_str));
        run("docker-compose", &self.args(&all), Some(&self.dir), timeout).await.map(drop)
    }

    /// Pulls the images of `services` (the validation that they exist in their registry);
    /// what it printed. Its exit code alone proves nothing: docker-compose 1.29 against
    /// Podman's compatible API exits 0 after a pull that failed (the error comes inside the
    /// answer's stream), so the caller checks that the images are here afterwards.
    pub async fn pull(&self, services: &[String]) -> Result<crate::command::Output, CommandError> {
        let mut args = vec!["pull", "-q"];
        args.extend(services.iter().map(String::as_str));
        self.compose_output(&args).await
    }

    /// Creates or recreates `services` only (`up -d --no-deps`): the others are not touched.
    pub async fn up(&self, services: &[String]) -> Result<(), CommandError> {
        if services.is_empty() {
            return Ok(());
        }
        let mut args = vec!["up", "-d", "--no-deps"];
        args.extend(services.iter().map(String::as_str));
        self.compose(&args).await.map(drop)
    }

    /// Makes a second container of `service` from the current definitions beside the one
    /// that runs (`up -d --no-deps --no-recreate --scale SERVICE=2`: the running one is kept
    /// whatever its configuration; compose numbers the new one after the highest): a
    /// start-first swap's new container.
    pub async fn up_beside(&self, service: &str) -> Result<(), CommandError> {
        let scale = format!("{service}=2");
        let args = ["up", "-d", "--no-deps", "--no-recreate", "--scale", &scale, service];
        self.compose(&args).await.map(drop)
    }

    /// Stops the containers of `services`.
    pub async fn stop(&self, services: &[String]) -> Result<(), CommandError> {
        if services.is_empty() {
            return Ok(());
        }
        let mut args = vec!["stop"];
        args.extend(services.iter().map(String::as_str));
        self.compose(&args).await.map(drop)
    }

    /// Stops and removes the containers of `services`.
    pub async fn remove(&self, services: &[String]) -> Result<(), CommandError> {
        if services.is_empty() {
            return Ok(());
        }
        let mut args = vec!["rm", "-s", "-f"];
        args.extend(services.iter().map(String::as_str));
        self.compose(&args).await.map(drop)
    }
}

/// Each service's labels: `service -> (key -> value)`.
pub type Labels = BTreeMap<String, std::collections::HashMap<String, String>>;

/// A project's normalised configuration, as `docker-compose config` printed it.
#[derive(Debug, Clone)]
pub struct Config(String);

impl Config {
    /// The image each service names (`config` prints services at two spaces and their keys
    /// at four; a service that is only built has none).
    pub fn images(&self) -> BTreeMap<String, String> {
        images_in(&self.0)
    }

    /// Each service's labels.
    pub fn labels(&self) -> Labels {
        labels_in(&self.0)
    }

    /// Whether `service` sets `key` (a top-level key of the service: `ports`,
    /// `container_name`).
    pub fn sets(&self, service: &str, key: &str) -> bool {
        let mut found = false;
        service_keys(&self.0, |s, k, _| found |= s == service && k == key);
        found
    }
}

/// `service -> image` from `docker-compose config` output.
pub fn images_in(config: &str) -> BTreeMap<String, String> {
    let mut images = BTreeMap::new();
    service_keys(config, |service, key, value| {
        if key == "image" {
            images.insert(service.to_owned(), scalar(value));
        }
    });
    images
}

/// `service -> labels` from `docker-compose config` output (which prints labels as a map,
/// one `key: value` at six spaces under `labels:`).
pub fn labels_in(config: &str) -> Labels {
    let mut labels = Labels::new();
    service_keys(config, |service, key, value| {
        if let Some((label, v)) = key.strip_prefix("labels.").zip(Some(value)) {
            labels.entry(service.to_owned()).or_default().insert(scalar(label), scalar(v));
        }
    });
    labels
}

/// Calls `each(service, key, value)` for every service's key (four spaces) and every entry of
/// its `labels` (six spaces, as `labels.<name>`) in the normalised configuration.
fn service_keys(config: &str, mut each: impl FnMut(&str, &str, &str)) {
    let mut in_services = false;
    let mut service: Option<String> = None;
    let mut in_labels = false;
    for line in config.lines() {
        if !line.starts_with(' ') {
            in_services = line.trim_end() == "services:";
            service = None;
            continue;
        }
        if !in_services {
            continue;
        }
        if let Some(name) = line.strip_prefix("  ").filter(|l| !l.starts_with(' ')) {
            service = name.trim_end().strip_suffix(':').map(str::to_owned);
            in_labels = false;
            continue;
        }
        let Some(s) = &service else { continue };
        if let Some(entry) = line.strip_prefix("    ").filter(|l| !l.starts_with(' ')) {
            in_labels = entry.trim_end() == "labels:";
            if let Some((key, value)) = entry.split_once(": ") {
                each(s, key, value);
            } else if let Some(key) = entry.trim_end().strip_suffix(':') {
                // A key whose value is a block (`ports:`, `labels:`).
                each(s, key, "");
            }
        } else if let Some(entry) = line.strip_prefix("      ").filter(|l| !l.starts_with(' ')) {
            if let Some((key, value)) = entry.split_once(": ").filter(|_| in_labels) {
                each(s, &format!("labels.{key}"), value);
            }
        }
    }
}

/// A YAML scalar as compose prints it: plain, or quoted when it must be (`'...'` with `''`
/// for a quote; `"..."`, whose escapes are left as they are: a label that needs them is
/// refused by its own parser).
fn scalar(v: &str) -> String {
    let v = v.trim();
    if let Some(inner) = v.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        return inner.replace("''", "'");
    }
    v.strip_prefix('"').and_then(|r| r.strip_suffix('"')).unwrap_or(v).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_read_from_the_normalised_configuration() {
        let config = "networks: {}\nservices:\n  db:\n    environment:\n      image: no\n    image: postgres:15\n  web:\n    build:\n      context: .\n    image: '127.0.0.1:5000/web:2'\n  worker:\n    build: .\nversion: '2.4'\nvolumes:\n  data: {}\n";
        let images = images_in(config);
        assert_eq!(images.get("db").map(String::as_str), Some("postgres:15"));
        assert_eq!(images.get("web").map(String::as_str), Some("127.0.0.1:5000/web:2"));
        assert_eq!(images.len(), 2);
    }

    #[test]
    fn labels_are_read_per_service() {
        let config = "services:\n  web:\n    image: app:1\n    labels:\n      steward.deploy.test: pytest -q\n      other: 'a: b'\n    ports:\n    - published: 80\n  db:\n    environment:\n      labels: no\n    image: postgres:15\nvolumes: {}\n";
        let labels = labels_in(config);
        let web = labels.get("web").expect("web's labels");
        assert_eq!(web.get("steward.deploy.test").map(String::as_str), Some("pytest -q"));
        assert_eq!(web.get("other").map(String::as_str), Some("a: b"));
        assert!(!labels.contains_key("db"), "{labels:?}");
        assert_eq!(images_in(config).get("web").map(String::as_str), Some("app:1"));
        let config = Config(config.to_owned());
        assert!(config.sets("web", "ports"));
        assert!(config.sets("web", "image"));
        assert!(!config.sets("db", "ports"), "a key inside another key is not the service's");
        assert!(!config.sets("db", "labels"));
        assert!(!config.sets("web", "container_name"));
    }
}
