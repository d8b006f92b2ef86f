//! steward-definition: where a compose project defines a service's image, and the change of
//! that definition to a new reference (the write-back).
//!
//! [`edit`] finds and replaces the value as text. [`find`] and [`Variable::change`] decide what
//! changes, the same for every caller: the updater, which reads the operator's files through
//! the engine, and the deployer, which changes its git checkout and commits. What is decided
//! here is why a change is refused; the callers only read and write files.
//!
//! The rule: the value found, interpolated, must be exactly the reference the old container
//! was created from, or already the new one (done before: left as it is). Anything else (a
//! hand edit, a later update, an older event replayed) is refused and never written over.

pub mod edit;

use std::ops::Range;

/// What `update.written_back`'s `committer` says when the deployer commits the change.
pub const DEPLOYER: &str = "deployer";
/// The files that mark a compose project's directory as a checkout of the deployer, holding
/// the compose project's name: the updater, finding one that names the container's project,
/// hands the write-back over instead of refusing a git checkout. Where the deployer writes it:
/// [`deployer_mark`].
pub const DEPLOYER_MARKS: [&str; 2] = [".git/steward-deployer", ".steward-deployer"];

/// Where the mark goes for a repository whose compose file is `compose_file`: compose's
/// working directory is the compose file's; at the top of the checkout, inside `.git` (never
/// committed, never in the work tree), else beside the compose file.
pub fn deployer_mark(compose_file: &str) -> String {
    match compose_file.rsplit_once('/') {
        Some((dir, _)) if !dir.is_empty() => format!("{dir}/{}", DEPLOYER_MARKS[1]),
        _ => DEPLOYER_MARKS[0].to_owned(),
    }
}

/// A file of the project as read: what to call it in a message, and its text.
#[derive(Debug, Clone, Copy)]
pub struct Text<'a> {
    /// Its path for a human (on the host, or in the repository).
    pub name: &'a str,
    /// Its content.
    pub text: &'a str,
}

/// The env file a variable may be set in, as read.
#[derive(Debug, Clone, Copy)]
pub enum Env<'a> {
    /// Read.
    Read(Text<'a>),
    /// There is no such file (named).
    Missing(&'a str),
    /// It cannot be used, and why (not UTF-8, outside the project).
    Unusable(&'a str),
}

/// Which file a [`Change`] is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The compose file's `image:` line.
    Compose,
    /// The env file's variable.
    Env,
}

/// One value to change in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The file.
    pub which: Which,
    /// Its name, for messages.
    pub file: String,
    /// What changes in it: `services.S.image`, or the variable's name.
    pub key: String,
    /// The value's bytes in the file.
    pub span: Range<usize>,
    /// What the value says now.
    pub current: String,
    /// What it must say for the change to be made (what the old container ran).
    pub old: String,
    /// What it will say.
    pub new: String,
}

impl Change {
    /// Whether the file already names the new reference (nothing to write).
    pub fn done(&self) -> bool {
        self.current == self.new
    }

    /// The file's new text; `None` when it already says it ([`Change::done`]). Refused when
    /// the value is neither the old nor the new reference.
    pub fn apply(&self, text: &str) -> Result<Option<String>, String> {
        if self.done() {
            return Ok(None);
        }
        if self.current != self.old {
            return Err(format!(
                "{} in {} is `{}`, not `{}` the container ran before: changed by hand since? Left as it is",
                self.key, self.file, self.current, self.old
            ));
        }
        Ok(Some(edit::replaced(text, &self.span, &self.new)))
    }
}

/// A service's image names a variable: the change is in the env file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// The variable.
    pub name: String,
    compose: String,
    service: String,
    written: String,
    interpolated: edit::Interpolated,
    old_image: String,
    new_image: String,
}

/// What [`find`] found in the compose file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A literal `image:`: the change is that line.
    Literal(Change),
    /// An interpolated one: read the env file, then [`Variable::change`].
    Variable(Variable),
}

/// Where `compose` defines the image of `service`, which ran `old_image` and now runs
/// `new_image`; refused (with why) when it cannot be said for sure.
pub fn find(
    compose: Text<'_>,
    service: &str,
    old_image: &str,
    new_image: &str,
) -> Result<Found, String> {
    let line =
        edit::find_image(compose.text, service).map_err(|e| format!("{}: {e}", compose.name))?;
    let interpolated = edit::interpolation(&line.value)
        .map_err(|e| format!("{}: the `image:` of service `{service}`: {e}", compose.name))?;
    let Some(var) = interpolated else {
        return Ok(Found::Literal(Change {
            which: Which::Compose,
            file: compose.name.to_owned(),
            key: format!("services.{service}.image"),
            span: line.span,
            current: line.value,
            old: old_image.to_owned(),
            new: new_image.to_owned(),
        }));
    };
    if let Some(other) = edit::shared_use(compose.text, &line.span, &var.name, &line.value) {
        return Err(format!(
            "{}: {} also names something else (`{other}`): writing it would move that too; give service `{service}` a variable of its own",
            compose.name, var.name
        ));
    }
    Ok(Found::Variable(Variable {
        name: var.name.clone(),
        compose: compose.name.to_owned(),
        service: service.to_owned(),
        written: line.value,
        interpolated: var,
        old_image: old_image.to_owned(),
        new_image: new_image.to_owned(),
    }))
}

impl Variable {
    /// The change of the variable in `env`; refused when it is not set there or the tag is
    /// not inside it.
    pub fn change(&self, env: Env<'_>) -> Result<Change, String> {
        let env = match env {
            Env::Read(env) => env,
            Env::Missing(name) => {
                return Err(format!(
                    "{} is not set in {name} (it does not exist): the shell's environment or the default names the image; set it there",
                    self.name
                ))
            }
            Env::Unusable(why) => return Err(why.to_owned()),
        };
        let set = match edit::find_env(env.text, &self.name) {
            Ok(Some(set)) => set,
            Ok(None) => {
                return Err(format!(
                    "{} is not set in {}: the shell's environment or the default names the image; set it there",
                    self.name, env.name
                ))
            }
            Err(e) => return Err(format!("{}: {e}", env.name)),
        };
        let var = &self.interpolated;
        if !var.suffix.is_empty() {
            return Err(format!(
                "the tag of service `{}` is not inside {} (`{}`)",
                self.service, self.name, self.written
            ));
        }
        let Some(old) = self.old_image.strip_prefix(var.prefix.as_str()) else {
            return Err(format!(
                "{}: `{}` is not what the container was created from ({})",
                self.compose, self.written, self.old_image
            ));
        };
        let Some(new) = self.new_image.strip_prefix(var.prefix.as_str()) else {
            return Err(format!("{} does not start with `{}`", self.new_image, var.prefix));
        };
        Ok(Change {
            which: Which::Env,
            file: env.name.to_owned(),
            key: self.name.clone(),
            span: set.span,
            current: set.value,
            old: old.to_owned(),
            new: new.to_owned(),
        })
    }
}

/// A project's definition files as text: the compose file and, when there is one, its `.env`.
#[derive(Debug, Clone, Copy)]
pub struct Files<'a> {
    /// The compose file.
    pub compose: &'a str,
    /// The env file beside it.
    pub env: Option<&'a str>,
}

/// Whether `after` differs from `before` in nothing but the image values of `services` (their
/// `image:` lines, or the `.env` variables those lines interpolate, written the same way in
/// both): every other byte is the same. What a write-back commit changes; a deployment of
/// such a change has nothing to apply to a container that already runs the new image. Not
/// sure (a service or variable not found, an image line now interpolating and before not):
/// `false`.
pub fn images_only(before: Files<'_>, after: Files<'_>, services: &[&str]) -> bool {
    let mut compose_edits = vec![];
    let mut env_edits = vec![];
    for service in services {
        let (Ok(a), Ok(b)) =
            (edit::find_image(after.compose, service), edit::find_image(before.compose, service))
        else {
            return false;
        };
        match (edit::interpolation(&a.value), edit::interpolation(&b.value)) {
            (Ok(None), Ok(None)) => compose_edits.push((a.span, b.value)),
            (Ok(Some(va)), Ok(Some(_))) if a.value == b.value => {
                let (Some(env_a), Some(env_b)) = (after.env, before.env) else { return false };
                let (Ok(Some(ea)), Ok(Some(eb))) =
                    (edit::find_env(env_a, &va.name), edit::find_env(env_b, &va.name))
                else {
                    return false;
                };
                env_edits.push((ea.span, eb.value));
            }
            _ => return false,
        }
    }
    let undo = |text: &str, mut edits: Vec<(Range<usize>, String)>| {
        // From the end, so earlier spans stay valid; a variable shared by two services once.
        edits.sort_by_key(|e| std::cmp::Reverse(e.0.start));
        edits.dedup_by(|x, y| x.0 == y.0);
        edits.iter().fold(text.to_owned(), |t, (span, value)| edit::replaced(&t, span, value))
    };
    let compose = undo(after.compose, compose_edits);
    let env = after.env.map(|e| undo(e, env_edits));
    compose == before.compose && env.as_deref() == before.env
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMPOSE: &str =
        "services:\n  web:\n    image: \"reg/app:v1\" # pinned\n  db:\n    image: ${DB_IMAGE}\n";

    fn compose() -> Text<'static> {
        Text { name: "docker-compose.yml", text: COMPOSE }
    }

    #[test]
    fn a_literal_image_changes_only_from_what_the_container_ran() {
        let Ok(Found::Literal(c)) = find(compose(), "web", "reg/app:v1", "reg/app:v2") else {
            panic!("a literal image")
        };
        let text = c.apply(COMPOSE).expect("from v1").expect("a change");
        assert_eq!(text, COMPOSE.replace("reg/app:v1", "reg/app:v2"));
        // Done before: nothing to write, and a replay of the old change is refused.
        let Ok(Found::Literal(again)) =
            find(Text { name: "f", text: &text }, "web", "reg/app:v1", "reg/app:v2")
        else {
            panic!("a literal image")
        };
        assert_eq!(again.apply(&text), Ok(None));
        let Ok(Found::Literal(old)) =
            find(Text { name: "f", text: &text }, "web", "reg/app:v0", "reg/app:v1")
        else {
            panic!("a literal image")
        };
        let refused = old.apply(&text).expect_err("v2 is not v0");
        assert!(refused.contains("changed by hand"), "{refused}");
    }

    #[test]
    fn an_interpolated_image_changes_in_the_env_file_or_says_why_not() {
        let Ok(Found::Variable(var)) = find(compose(), "db", "postgres:15", "postgres:16") else {
            panic!("a variable")
        };
        assert_eq!(var.name, "DB_IMAGE");
        let env = "A=1\nDB_IMAGE=postgres:15\n";
        let c = var.change(Env::Read(Text { name: ".env", text: env })).expect("set");
        assert_eq!((c.which, c.key.as_str()), (Which::Env, "DB_IMAGE"));
        assert_eq!(c.apply(env), Ok(Some("A=1\nDB_IMAGE=postgres:16\n".to_owned())));
        let missing = var.change(Env::Missing("/p/.env")).expect_err("no env file");
        assert!(missing.contains("/p/.env (it does not exist)"), "{missing}");
        let unset = var.change(Env::Read(Text { name: ".env", text: "A=1\n" })).expect_err("unset");
        assert!(unset.contains("is not set in .env"), "{unset}");
        assert_eq!(var.change(Env::Unusable("x is not UTF-8")), Err("x is not UTF-8".to_owned()));
    }

    #[test]
    fn only_image_changes_are_told_from_definition_changes() {
        let env = "DB_IMAGE=postgres:15\nOTHER=1\n";
        let before = Files { compose: COMPOSE, env: Some(env) };
        let web = COMPOSE.replace("reg/app:v1", "reg/app:v2");
        let db_env = env.replace("postgres:15", "postgres:16");
        let after = Files { compose: &web, env: Some(&db_env) };
        assert!(images_only(before, after, &["web", "db"]));
        // Each change needs its service named.
        assert!(!images_only(before, after, &["web"]));
        assert!(!images_only(before, after, &["db"]));
        // Anything else changed beside the image: not only images.
        let more = web.replace("# pinned", "# moved");
        assert!(!images_only(before, Files { compose: &more, env: Some(env) }, &["web"]));
        let other = env.replace("OTHER=1", "OTHER=2");
        assert!(!images_only(before, Files { compose: COMPOSE, env: Some(&other) }, &["db"]));
        // The env file gone, or a literal image turned into a variable: not sure, so no.
        assert!(!images_only(before, Files { compose: COMPOSE, env: None }, &["db"]));
        let var = COMPOSE.replace("\"reg/app:v1\"", "${WEB}");
        assert!(!images_only(before, Files { compose: &var, env: Some(env) }, &["web"]));
        // Nothing changed at all: only images (none).
        assert!(images_only(before, before, &[]));
    }

    #[test]
    fn the_mark_goes_where_compose_runs() {
        assert_eq!(deployer_mark("docker-compose.yml"), ".git/steward-deployer");
        assert_eq!(deployer_mark("deploy/compose.yml"), "deploy/.steward-deployer");
        assert_eq!(deployer_mark("a/b/c.yml"), "a/b/.steward-deployer");
    }

    #[test]
    fn unknown_services_and_shared_variables_are_refused() {
        assert!(find(compose(), "nope", "a:1", "a:2").is_err());
        let shared = "services:\n  a:\n    image: ${IMG}\n  b:\n    image: reg/worker:${IMG}\n";
        let e = find(Text { name: "c.yml", text: shared }, "a", "x:1", "x:2").expect_err("shared");
        assert!(e.contains("also names something else"), "{e}");
    }
}
