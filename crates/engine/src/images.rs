//! Local images: a digest already on the host, the images of a repository, removing one.
//! What the updater's rollback (no pull when the previous image is still here) and its
//! old-image cleanup need.

use std::collections::HashSet;

use bollard::query_parameters::{ListImagesOptions, RemoveImageOptions, TagImageOptions};
use steward_imageref::ImageRef;

use crate::{Engine, EngineError};

/// A local image as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedImage {
    /// Its id (`sha256:` of the image config).
    pub id: String,
    /// `repo:tag` references.
    pub repo_tags: Vec<String>,
    /// `repo@sha256:` references.
    pub repo_digests: Vec<String>,
    /// When it was built (Unix seconds), as the engine reports it.
    pub created: i64,
    /// Its size in bytes (0 when the engine reports none).
    pub size_bytes: u64,
}

/// Whether a `RepoTags` entry is a tag. Podman also lists there the `repo@sha256:` name an
/// image was pulled by (Docker never does: such a name is only in `RepoDigests`), and a
/// digest is not a tag the updater could keep, move or prune by.
fn is_tag(reference: &str) -> bool {
    reference != "<none>:<none>" && !reference.contains('@')
}

/// How many times [`Engine::tag_checked`] sets a tag the engine lost.
const TAG_ATTEMPTS: usize = 5;
/// How long after setting a tag [`Engine::tag_checked`] reads it back the second time.
const TAG_SETTLE: std::time::Duration = std::time::Duration::from_millis(50);
/// How often an image list that lost an image under it is asked (Podman).
const LIST_ATTEMPTS: u32 = 3;

/// Podman 4.3's answer when an image it was listing was removed meanwhile: 500, "... image not
/// known" (Docker lists what is there).
fn lost_while_listed(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 500, message }
        if message.contains("image not known"))
}

impl Engine {
    /// Points `image`'s repository `tag` at `digest` if that digest is already on the host
    /// (`true`); `false` when it is not (then it must be pulled). A digest is content-addressed:
    /// the local image is exactly what a pull would bring, and a rollback needs no registry.
    pub async fn tag_local_digest(
        &self,
        image: &ImageRef,
        digest: &str,
        tag: &str,
    ) -> Result<bool, EngineError> {
        let docker = self.client()?;
        let repository = image.familiar_name();
        let reference = format!("{repository}@{digest}");
        match self.timed(docker.inspect_image(&reference)).await {
            Ok(_) => {}
            Err(e) if crate::gone(&e) => return Ok(false),
            Err(e) => return Err(self.call_failed(&format!("inspect image {reference}"), e)),
        }
        self.tag_checked(&reference, &repository, tag).await?;
        Ok(true)
    }

    /// Points `repository:tag` at the image `reference` names, and checks that it does.
    ///
    /// Podman 4.3 loses a name set while another name of the same image changes (a lost update
    /// of the image's name list: in a test, 4 of 20 tags set two at a time were gone at once),
    /// and a lost tag would make the replacement fail ("image not known") or, worse, leave
    /// the tag on the image it named before. So the tag is read back, twice [`TAG_SETTLE`]
    /// apart, and set again when lost, up to [`TAG_ATTEMPTS`] times; Docker keeps it the
    /// first time (two inspects and 50 ms more per tag).
    pub(crate) async fn tag_checked(
        &self,
        reference: &str,
        repository: &str,
        tag: &str,
    ) -> Result<(), EngineError> {
        let docker = self.client()?;
        let what = format!("tag {reference} as {repository}:{tag}");
        let wanted = self
            .timed(docker.inspect_image(reference))
            .await
            .map_err(|e| self.call_failed(&format!("inspect image {reference}"), e))?
            .id;
        let tagged = format!("{repository}:{tag}");
        let kept = || async {
            match self.timed(docker.inspect_image(&tagged)).await {
                Ok(image) => Ok(image.id.is_some() && image.id == wanted),
                Err(e) if crate::gone(&e) => Ok(false),
                Err(e) => Err(self.call_failed(&format!("inspect image {tagged}"), e)),
            }
        };
        for _ in 0..TAG_ATTEMPTS {
            let options =
                TagImageOptions { repo: Some(repository.to_owned()), tag: Some(tag.to_owned()) };
            self.timed(docker.tag_image(reference, Some(options)))
                .await
                .map_err(|e| self.call_failed(&what, e))?;
            // Read back twice: a concurrent change that read the names before this tag may
            // write them back a moment after the first read.
            if kept().await? && {
                tokio::time::sleep(TAG_SETTLE).await;
                kept().await?
            } {
                return Ok(());
            }
            tracing::warn!(%tagged, "the engine lost the new tag: set again");
        }
        Err(self.failed(&what, format!("the engine lost the tag {TAG_ATTEMPTS} times in a row")))
    }

    /// Every local image (intermediate layers excluded).
    pub async fn images(&self) -> Result<Vec<ListedImage>, EngineError> {
        let mut attempt = 0;
        let listed = loop {
            attempt += 1;
            let options = ListImagesOptions { all: false, ..Default::default() };
            match self.timed(self.client()?.list_images(Some(options))).await {
                Ok(listed) => break listed,
                // Podman fails the whole list when an image is removed while it lists: the
                // list is asked again (the removal is over by then).
                Err(e) if attempt < LIST_ATTEMPTS && lost_while_listed(&e) => {
                    tracing::debug!(error = %e, attempt, "an image went away during the list; listed again");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(self.call_failed("list images", e)),
            }
        };
        Ok(listed
            .into_iter()
            .map(|i| ListedImage {
                id: i.id,
                repo_tags: i.repo_tags.into_iter().filter(|t| is_tag(t)).collect(),
                repo_digests: i.repo_digests.into_iter().filter(|d| d != "<none>@<none>").collect(),
                created: i.created,
                size_bytes: u64::try_from(i.size).unwrap_or(0),
            })
            .collect())
    }

    /// The image ids of every container, running or stopped: none of them may be removed.
    pub async fn images_in_use(&self) -> Result<HashSet<String>, EngineError> {
        let summaries = self
            .timed(self.list_containers(&self.client()?, true))
            .await
            .map_err(|e| self.call_failed("list containers", e))?;
        Ok(summaries.into_iter().filter_map(|s| s.image_id).collect())
    }

    /// Removes the image `id` (`sha256:...`), never forced: the engine refuses an image a
    /// container uses or one referenced by another repository. `Ok(false)`: it was gone
    /// already.
    pub async fn remove_image(&self, id: &str) -> Result<bool, EngineError> {
        let options = RemoveImageOptions { force: false, noprune: false, platforms: None };
        match self.timed(self.client()?.remove_image(id, Some(options), None)).await {
            Ok(_) => Ok(true),
            Err(e) if crate::gone(&e) => Ok(false),
            Err(e) => Err(self.call_failed(&format!("remove image {id}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_podmans_image_lost_during_a_list_is_listed_again() {
        let error =
            |status_code: u16, message: &str| bollard::errors::Error::DockerResponseServerError {
                status_code,
                message: message.into(),
            };
        // As the CI's Podman sample saw it.
        let lost = "retrieving label for image \"33a0\": you may need to remove the image to resolve the error: fallback error checking whether image is a manifest list: reading image \"33a0\": locating image with ID \"33a0\": image not known";
        assert!(super::lost_while_listed(&error(500, lost)));
        assert!(!super::lost_while_listed(&error(500, "database is locked")));
        assert!(!super::lost_while_listed(&error(404, "image not known")));
    }

    #[test]
    fn digest_names_are_not_tags() {
        assert!(super::is_tag("127.0.0.1:5000/app:1.0"));
        assert!(super::is_tag("gitea/gitea:1.22"));
        assert!(!super::is_tag("<none>:<none>"));
        assert!(!super::is_tag(&format!("127.0.0.1:5000/app@sha256:{}", "ab".repeat(32))));
    }
}
