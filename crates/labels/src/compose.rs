//! What compose writes on its containers about the project: the service and the services it
//! `depends_on`, so updates of several containers of one project keep compose's start order
//! (dependencies first).
//!
//! Compose v2 labels each container with `com.docker.compose.depends_on`:
//! `db:service_healthy:false,cache:service_started:true` (service, condition, restart). Compose
//! v1 (1.29) writes no such label: its containers have no known order and are updated as the
//! events come.

use std::collections::HashMap;

/// The compose project.
pub const PROJECT: &str = "com.docker.compose.project";
/// The compose service.
pub const SERVICE: &str = "com.docker.compose.service";
/// Compose v2: the services this one depends on.
pub const DEPENDS_ON: &str = "com.docker.compose.depends_on";
/// The project's directory on the host (`docker-compose.yml`, `.env`).
pub const WORKING_DIR: &str = "com.docker.compose.project.working_dir";
/// `True` on containers of `docker compose run`.
pub const ONEOFF: &str = "com.docker.compose.oneoff";

/// A container's place in its compose project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeService {
    /// The project.
    pub project: String,
    /// The service.
    pub service: String,
    /// Services of the same project it depends on (empty when none, or unknown: compose v1).
    pub depends_on: Vec<String>,
}

impl ComposeService {
    /// The compose place of a container, if compose made it (and not by `run`).
    pub fn from_labels(labels: &HashMap<String, String>) -> Option<Self> {
        if labels.get(ONEOFF).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return None;
        }
        let project = labels.get(PROJECT).filter(|p| !p.is_empty())?.clone();
        let service = labels.get(SERVICE).filter(|s| !s.is_empty())?.clone();
        let depends_on = labels
            .get(DEPENDS_ON)
            .map(|v| {
                v.split(',')
                    .filter_map(|entry| entry.split(':').next())
                    .map(str::trim)
                    .filter(|s| !s.is_empty() && *s != service)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Some(Self { project, service, depends_on })
    }

    /// Whether `other` is a service this one depends on, in the same project.
    pub fn depends_on(&self, other: &ComposeService) -> bool {
        self.project == other.project && self.depends_on.contains(&other.service)
    }
}

/// The positions of `items` reordered so that, within each compose project, a service comes
/// after every service it depends on (directly or not); otherwise the order is kept. Items
/// outside compose keep their places relative to each other. A dependency cycle (which compose
/// refuses anyway) leaves the services in it in their given order.
pub fn dependency_order(items: &[Option<ComposeService>]) -> Vec<usize> {
    let mut placed = vec![false; items.len()];
    let mut order = Vec::with_capacity(items.len());
    while order.len() < items.len() {
        let before = order.len();
        for i in 0..items.len() {
            if placed[i] {
                continue;
            }
            // Ready when no unplaced item is one of its dependencies.
            let waits = items[i].as_ref().is_some_and(|me| {
                items.iter().enumerate().any(|(j, other)| {
                    !placed[j] && j != i && other.as_ref().is_some_and(|o| me.depends_on(o))
                })
            });
            if !waits {
                placed[i] = true;
                order.push(i);
            }
        }
        if order.len() == before {
            // A cycle: the first unplaced item goes next, which breaks it.
            if let Some(i) = placed.iter().position(|p| !p) {
                placed[i] = true;
                order.push(i);
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn svc(project: &str, service: &str, deps: &str) -> Option<ComposeService> {
        ComposeService::from_labels(&labels(&[
            (PROJECT, project),
            (SERVICE, service),
            (DEPENDS_ON, deps),
        ]))
    }

    #[test]
    fn the_v2_label_names_services_with_condition_and_restart() {
        let s = svc("gitea", "gitea", "postgres:service_healthy:false,cache:service_started:true")
            .expect("a compose service");
        assert_eq!(s.project, "gitea");
        assert_eq!(s.depends_on, vec!["postgres".to_owned(), "cache".to_owned()]);
        assert_eq!(svc("p", "a", "").map(|s| s.depends_on), Some(vec![]));
    }

    #[test]
    fn v1_containers_one_offs_and_plain_containers_have_no_dependencies() {
        let v1 = ComposeService::from_labels(&labels(&[(PROJECT, "p"), (SERVICE, "a")]));
        assert_eq!(v1.map(|s| s.depends_on), Some(vec![]));
        let run = labels(&[(PROJECT, "p"), (SERVICE, "a"), (ONEOFF, "True")]);
        assert_eq!(ComposeService::from_labels(&run), None);
        assert_eq!(ComposeService::from_labels(&labels(&[])), None);
    }

    #[test]
    fn dependencies_come_first_within_a_project_only() {
        let items = vec![
            svc("p", "nginx", "gitea:service_healthy:false"),
            None,
            svc("p", "gitea", "postgres:service_healthy:false"),
            svc("q", "postgres", ""), // another project's postgres: no edge
            svc("p", "postgres", ""),
        ];
        let order = dependency_order(&items);
        let pos = |i| order.iter().position(|&x| x == i).expect("placed");
        assert_eq!(order.len(), 5);
        assert!(pos(4) < pos(2) && pos(2) < pos(0), "{order:?}");
        // Unrelated items keep their relative order.
        assert!(pos(1) < pos(3), "{order:?}");
    }

    #[test]
    fn a_cycle_still_places_every_item_once() {
        let items = vec![svc("p", "a", "b"), svc("p", "b", "a"), svc("p", "c", "a")];
        let mut order = dependency_order(&items);
        order.sort_unstable();
        assert_eq!(order, vec![0, 1, 2]);
    }
}
