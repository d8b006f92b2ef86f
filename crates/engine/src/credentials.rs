//! Registry credentials from the operator's Docker client configuration
//! (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, including credential helpers),
//! as `docker login` wrote them.

use steward_imageref::ImageRef;

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

/// The operator's login exists but cannot be used: an unreadable or malformed
/// `config.json`, or a credential helper that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read the registry login for {key} from {config}: {reason} (is the file there and readable by this user? `docker login` writes it with mode 0600)")]
pub struct CredentialsError {
    /// The registry, as `docker login` keys it.
    pub key: String,
    /// Where the login was looked for.
    pub config: String,
    /// What went wrong.
    pub reason: String,
}

/// Credentials for the registry of `image`, if the operator logged in to it (keyed as
/// `docker login` keys them: [`ImageRef::credential_key`]). No configuration, or no login for
/// that registry, is `Ok(None)`; a login that exists but cannot be read is an error, so a
/// private registry's refusal is not left unexplained.
pub fn registry_credentials(
    image: &ImageRef,
) -> Result<Option<RegistryCredentials>, CredentialsError> {
    use docker_credential::CredentialRetrievalError as E;
    let key = image.credential_key();
    match docker_credential::get_credential(key) {
        Ok(docker_credential::DockerCredential::UsernamePassword(user, pass)) => {
            Ok(Some(RegistryCredentials::Basic(user, pass)))
        }
        Ok(docker_credential::DockerCredential::IdentityToken(token)) => {
            Ok(Some(RegistryCredentials::IdentityToken(token)))
        }
        Err(E::NoCredentialConfigured | E::ConfigNotFound) => Ok(None),
        // The crate cannot tell a missing file from an unreadable one.
        Err(E::ConfigReadError)
            if config_path().is_some_and(|p| {
                std::fs::metadata(p).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
            }) =>
        {
            Ok(None)
        }
        Err(e) => Err(CredentialsError {
            key: key.to_owned(),
            config: config_path()
                .map_or("~/.docker/config.json".into(), |p| p.display().to_string()),
            reason: e.to_string(),
        }),
    }
}

/// The client configuration file the login is read from (as `docker` finds it).
fn config_path() -> Option<std::path::PathBuf> {
    let dir = match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".docker"),
    };
    Some(dir.join("config.json"))
}
