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

/// One environment's project: its name, checkout and compose file.
#[derive(Debug, Clone)]
pub struct Compose {
    /// Project name (`<project>-<env>`).
    pub project: String,
    /// The checkout (compose's working directory: relative paths resolve here).
    pub dir: PathBuf,
    /// The compose file, relative to `dir`.
    pub file: String,
    /// One command's bound.
    pub timeout: Duration,
}

impl Compose {
    async fn compose(&self, args: &[&str]) -> Result<String, CommandError> {
        let mut all = vec!["-p", self.project.as_str(), "-f", self.file.as_str()];
        all.extend_from_slice(args);
        Ok(run("docker-compose", &all, Some(&self.dir), self.timeout).await?.stdout)
    }

    /// The file parses and is a valid compose project (`config -q`).
    pub async fn validate(&self) -> Result<(), CommandError> {
        if !self.dir.join(&self.file).is_file() {
            return Err(CommandError {
                command: format!("read {}", self.file),
                reason: "no such file in the commit".into(),
                tail: vec![],
                code: None,
            });
        }
        self.compose(&["config", "-q"]).await.map(drop)
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

    /// The image each service names, from the normalised configuration (`config` prints it
    /// with services at two spaces and their keys at four; a service that is only built has
    /// none).
    pub async fn images(&self) -> Result<BTreeMap<String, String>, CommandError> {
        Ok(images_in(&self.compose(&["config"]).await?))
    }

    /// Pulls the images of `services` (the validation that they exist in their registry).
    pub async fn pull(&self, services: &[String]) -> Result<(), CommandError> {
        let mut args = vec!["pull", "-q"];
        args.extend(services.iter().map(String::as_str));
        self.compose(&args).await.map(drop)
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

/// `service -> image` from `docker-compose config` output.
pub fn images_in(config: &str) -> BTreeMap<String, String> {
    let mut images = BTreeMap::new();
    let mut in_services = false;
    let mut service: Option<String> = None;
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
        } else if let (Some(s), Some(image)) = (&service, line.strip_prefix("    image: ")) {
            let image = image.trim().trim_matches(|c| c == '\'' || c == '"');
            images.insert(s.clone(), image.to_owned());
        }
    }
    images
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
}
