//! Registry credentials from the operator's Docker client configuration
//! (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, including credential helpers),
//! as `docker login` wrote them.

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum RegistryCredentials {
    /// User name and password (or access token used as password).
    Basic(String, String),
    /// An identity token from a credential helper.
    IdentityToken(String),
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        match self {
            Self::Basic(user, _) => write!(f, "Basic({user}, ***)"),
            Self::IdentityToken(_) => f.write_str("IdentityToken(***)"),
        }
    }
}

/// The registry host of an image reference, the way Docker reads it: the first path component
/// if it has a `.` or `:` or is `localhost`, else Docker Hub (`docker.io`).
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

/// Credentials for `registry` (`docker.io`, `ghcr.io`, `127.0.0.1:5001`), if the operator
/// logged in to it.
pub fn registry_credentials(registry: &str) -> Option<RegistryCredentials> {
    // Docker stores Hub credentials under its v1 index URL.
    let key = if registry == "docker.io" || registry == "index.docker.io" {
        "https://index.docker.io/v1/"
    } else {
        registry
    };
    match docker_credential::get_credential(key) {
        Ok(docker_credential::DockerCredential::UsernamePassword(user, pass)) => {
            Some(RegistryCredentials::Basic(user, pass))
        }
        Ok(docker_credential::DockerCredential::IdentityToken(token)) => {
            Some(RegistryCredentials::IdentityToken(token))
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::registry_of;

    #[test]
    fn registries_are_read_as_docker_reads_them() {
        assert_eq!(registry_of("nginx:1.27"), "docker.io");
        assert_eq!(registry_of("gitea/gitea:1.22"), "docker.io");
        assert_eq!(registry_of("ghcr.io/org/app:1"), "ghcr.io");
        assert_eq!(registry_of("127.0.0.1:5000/demo/app:1.0"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/app"), "localhost");
    }
}
