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

/// Credentials for the registry of `image`, if the operator logged in to it (keyed as
/// `docker login` keys them: [`ImageRef::credential_key`]).
pub fn registry_credentials(image: &ImageRef) -> Option<RegistryCredentials> {
    match docker_credential::get_credential(image.credential_key()) {
        Ok(docker_credential::DockerCredential::UsernamePassword(user, pass)) => {
            Some(RegistryCredentials::Basic(user, pass))
        }
        Ok(docker_credential::DockerCredential::IdentityToken(token)) => {
            Some(RegistryCredentials::IdentityToken(token))
        }
        Err(_) => None,
    }
}
