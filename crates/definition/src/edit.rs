//! Finding and changing, as text, where a compose project names a service's image: the
//! `image:` line of the service in the compose file, or the variable of the `.env` file it
//! interpolates. Only the value changes: every other byte (comments, order, quoting,
//! indentation, line ends) stays, because the file is the operator's and never re-serialised.
//!
//! The scan reads block-style YAML the way compose files are written (`services:` at the
//! left margin, one key per line); anything else (flow style, anchors and merge keys, a block
//! scalar, `extends`, the image named twice) is refused, never guessed. What is found is then
//! checked against what the container was created from: the value, interpolated, must be
//! exactly the reference the old container ran, so a wrong find is refused, not written.

use std::ops::Range;

use steward_imageref::ImageRef;

/// Where a service's `image:` is, and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLine {
    /// The value without its quotes.
    pub value: String,
    /// Its bytes in the file (inside the quotes, if any).
    pub span: Range<usize>,
}

/// The leading spaces of a line (tabs are not YAML indentation: refused by the caller).
fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// Blank or only a comment.
fn is_filler(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// The key of a `key: ...` line (quotes removed), and where its value starts.
fn key_of(line: &str) -> Option<(String, usize)> {
    let start = indent(line);
    let rest = &line[start..];
    let (key, after) = if let Some(q @ ('"' | '\'')) = rest.chars().next() {
        let end = rest[1..].find(q)? + 1;
        (rest[1..end].to_owned(), start + end + 1)
    } else {
        let colon = rest.find(':')?;
        (rest[..colon].trim_end().to_owned(), start + colon)
    };
    let tail = &line[after..];
    let tail = tail.trim_start_matches(' ');
    let colon_at = line.len() - tail.len();
    if !tail.starts_with(':') {
        return None;
    }
    let value_at = colon_at + 1;
    // `key:value` is not a mapping key in YAML (`a:b` is a plain scalar).
    if line[value_at..].chars().next().is_some_and(|c| c != ' ' && c != '\r') {
        return None;
    }
    Some((key, value_at))
}

/// Lines with their byte offsets.
fn lines(text: &str) -> Vec<(usize, &str)> {
    let mut at = 0;
    text.split_inclusive('\n')
        .map(|l| {
            let start = at;
            at += l.len();
            (start, l.trim_end_matches('\n').trim_end_matches('\r'))
        })
        .collect()
}

/// The `image:` of `service` in compose file `text`.
pub fn find_image(text: &str, service: &str) -> Result<ImageLine, String> {
    if text.contains('\t') {
        return Err("it contains tabs, which this reader does not take as YAML indentation".into());
    }
    let all = lines(text);
    let top = all
        .iter()
        .position(|(_, l)| indent(l) == 0 && key_of(l).is_some_and(|(k, _)| k == "services"))
        .ok_or("it has no `services:` at the left margin")?;
    if let Some((_, at)) = key_of(all[top].1) {
        if !is_filler(&all[top].1[at..]) {
            return Err("its `services:` is not a block of one service per key".into());
        }
    }
    // The services block: the lines after `services:` indented more than it.
    let block: Vec<&(usize, &str)> =
        all[top + 1..].iter().take_while(|(_, l)| is_filler(l) || indent(l) > 0).collect();
    let service_indent = block
        .iter()
        .find(|(_, l)| !is_filler(l))
        .map(|(_, l)| indent(l))
        .ok_or("its `services:` is empty")?;
    let starts: Vec<usize> = block
        .iter()
        .enumerate()
        .filter(|(_, (_, l))| {
            !is_filler(l)
                && indent(l) == service_indent
                && key_of(l).is_some_and(|(k, _)| k == service)
        })
        .map(|(i, _)| i)
        .collect();
    let start = match starts.as_slice() {
        [one] => *one,
        [] => return Err(format!("no service `{service}` is defined in it")),
        _ => return Err(format!("service `{service}` is defined more than once")),
    };
    if let Some((_, at)) = key_of(block[start].1) {
        if !is_filler(&block[start].1[at..]) {
            return Err(format!(
                "service `{service}` is not a block of one key per line (an anchor or flow style)"
            ));
        }
    }
    let body: Vec<&&(usize, &str)> = block[start + 1..]
        .iter()
        .take_while(|(_, l)| is_filler(l) || indent(l) > service_indent)
        .collect();
    let key_indent = body
        .iter()
        .find(|(_, l)| !is_filler(l))
        .map(|(_, l)| indent(l))
        .ok_or(format!("service `{service}` is empty"))?;
    let mut found = vec![];
    for (offset, line) in body.iter().map(|x| (x.0, x.1)) {
        if is_filler(line) || indent(line) != key_indent {
            continue;
        }
        match key_of(line) {
            Some((k, _)) if k == "extends" => {
                return Err(format!(
                    "service `{service}` uses `extends`: its image may be defined in another file"
                ))
            }
            Some((k, _)) if k == "<<" => {
                return Err(format!("service `{service}` merges an anchor (`<<:`)"))
            }
            Some((k, at)) if k == "image" => found.push((offset, line, at)),
            _ => {}
        }
    }
    let (offset, line, at) = match found.as_slice() {
        [one] => *one,
        [] => return Err(format!("service `{service}` has no `image:` line")),
        _ => return Err(format!("service `{service}` has more than one `image:` line")),
    };
    let raw = &line[at..];
    let lead = raw.len() - raw.trim_start_matches(' ').len();
    let raw = &raw[lead..];
    let value_at = offset + at + lead;
    let (value, span) = match raw.chars().next() {
        Some(q @ ('"' | '\'')) => {
            let end = raw[1..].find(q).ok_or("its `image:` has an unclosed quote")? + 1;
            let inner = &raw[1..end];
            if q == '"' && inner.contains('\\') {
                return Err("its `image:` has escapes in double quotes".into());
            }
            (inner.to_owned(), value_at + 1..value_at + end)
        }
        None | Some('#') => {
            return Err(format!("the `image:` of service `{service}` is not on its line"))
        }
        Some('&' | '*' | '|' | '>' | '{' | '[' | '!') => {
            return Err(format!("the `image:` of service `{service}` is not a plain value"))
        }
        Some(_) => {
            let end = raw.find(" #").unwrap_or(raw.len());
            let v = raw[..end].trim_end();
            (v.to_owned(), value_at..value_at + v.len())
        }
    };
    Ok(ImageLine { value, span })
}

/// A compose value split around its one variable: `prefix ${NAME...} suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpolated {
    /// Before the variable.
    pub prefix: String,
    /// The variable's name.
    pub name: String,
    /// After it.
    pub suffix: String,
}

/// The first line of compose file `text`, other than the one holding `span`, that uses variable
/// `name` for anything but the same image as `value` (another service's `image: <value>`, the
/// same expression, moves with it as one image decision); `None` when there is none. Such a
/// variable names more than this service's image: writing it would move that too, untested.
pub fn shared_use(text: &str, span: &Range<usize>, name: &str, value: &str) -> Option<String> {
    let uses = |line: &str| {
        let bytes = line.as_bytes();
        line.match_indices('$').any(|(i, _)| {
            let rest = &line[i + 1..];
            let rest = rest.strip_prefix('{').unwrap_or(rest);
            // `$$` is a literal dollar; the name must end where an identifier ends.
            (i == 0 || bytes[i - 1] != b'$')
                && rest.starts_with(name)
                && !rest[name.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    lines(text).into_iter().find_map(|(start, line)| {
        if (start..start + line.len()).contains(&span.start) || !uses(line) {
            return None;
        }
        let same_image = line
            .trim()
            .strip_prefix("image:")
            .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'') == value);
        (same_image != Some(true)).then(|| line.trim().to_owned())
    })
}

/// The variable `value` interpolates, `None` when it has none (`$$` is a literal `$`).
pub fn interpolation(value: &str) -> Result<Option<Interpolated>, String> {
    let mut found: Option<Interpolated> = None;
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        if bytes.get(i + 1) == Some(&b'$') {
            i += 2;
            continue;
        }
        let name_char = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        let (name, end) = if bytes.get(i + 1) == Some(&b'{') {
            let close = value[i..].find('}').ok_or("an unclosed `${`")? + i;
            let inner = &value[i + 2..close];
            let name_len = inner.bytes().take_while(|c| name_char(*c)).count();
            if inner[name_len..].contains('$') {
                return Err("a variable inside a variable's default".into());
            }
            (inner[..name_len].to_owned(), close + 1)
        } else {
            let len = value[i + 1..].bytes().take_while(|c| name_char(*c)).count();
            (value[i + 1..i + 1 + len].to_owned(), i + 1 + len)
        };
        if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
            return Err("a `$` that names no variable".into());
        }
        if found.is_some() {
            return Err("it interpolates more than one variable".into());
        }
        found = Some(Interpolated {
            prefix: value[..i].to_owned(),
            name,
            suffix: value[end..].to_owned(),
        });
        i = end;
    }
    if let Some(f) = &found {
        if f.prefix.contains("$$") || f.suffix.contains("$$") {
            return Err("an escaped `$$` beside the variable".into());
        }
    }
    Ok(found)
}

/// Where `.env` sets a variable: the value as written (quotes removed) and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvLine {
    /// The value.
    pub value: String,
    /// Its bytes in the file (inside the quotes, if any).
    pub span: Range<usize>,
}

/// The line of env file `text` that sets `name`; `None` when none does.
pub fn find_env(text: &str, name: &str) -> Result<Option<EnvLine>, String> {
    let mut found = vec![];
    for (offset, line) in lines(text) {
        let t = line.trim_start();
        if t.starts_with('#') {
            continue;
        }
        let lead = line.len() - t.len();
        let (t, lead) = match t.strip_prefix("export ") {
            Some(rest) => {
                let r = rest.trim_start();
                (r, lead + (t.len() - r.len()))
            }
            None => (t, lead),
        };
        let Some(eq) = t.find('=') else { continue };
        if t[..eq].trim_end() != name {
            continue;
        }
        let after = &t[eq + 1..];
        let value_lead = after.len() - after.trim_start_matches(' ').len();
        let raw = &after[value_lead..];
        let at = offset + lead + eq + 1 + value_lead;
        let (value, span) = match raw.chars().next() {
            Some(q @ ('"' | '\'')) => {
                let end =
                    raw[1..].find(q).ok_or(format!("{name}'s value has an unclosed quote"))? + 1;
                let inner = &raw[1..end];
                if q == '"' && inner.contains('\\') {
                    return Err(format!("{name}'s value has escapes"));
                }
                (inner.to_owned(), at + 1..at + end)
            }
            _ => {
                let end = raw.find(" #").unwrap_or(raw.len());
                let v = raw[..end].trim_end();
                (v.to_owned(), at..at + v.len())
            }
        };
        if value.contains('$') {
            return Err(format!("{name}'s value interpolates another variable"));
        }
        found.push(EnvLine { value, span });
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(format!("{name} is set more than once")),
    }
}

/// `old` (a reference as written) with its tag replaced by `new_tag`: the text before the
/// tag stays as the operator wrote it (`gitea/gitea`, not `docker.io/gitea/gitea`).
pub fn retagged(old: &str, new_tag: &str) -> Result<String, String> {
    let parsed = ImageRef::parse(old).map_err(|e| e.to_string())?;
    if parsed.is_pinned() {
        return Err(format!("{old} is pinned by digest"));
    }
    ImageRef::parse(&format!("{}:{new_tag}", parsed.familiar_name())).map_err(|e| e.to_string())?;
    // The parser's tag, found at the end of the text; none written is `latest` implied.
    match parsed.tag().and_then(|tag| old.strip_suffix(tag)).filter(|rest| rest.ends_with(':')) {
        Some(rest) => Ok(format!("{rest}{new_tag}")),
        None => Ok(format!("{old}:{new_tag}")),
    }
}

/// `text` with `span` replaced by `value`.
pub fn replaced(text: &str, span: &Range<usize>, value: &str) -> String {
    let mut out = String::with_capacity(text.len() + value.len());
    out.push_str(&text[..span.start]);
    out.push_str(value);
    out.push_str(&text[span.end..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMPOSE: &str = "# the stack\nversion: \"3.8\"\n\nservices:\n  # the database\n  db:\n    image: postgres:16  # pinned major\n  app:\n    restart: unless-stopped\n    image: \"${APP_IMAGE:-reg/app:1.0}\"\n    labels:\n      image: not-this\n  web:\n    image: 'nginx:1.27'\r\n";

    #[test]
    fn finds_the_image_of_each_service_and_nothing_else() {
        let db = find_image(COMPOSE, "db").expect("db");
        assert_eq!(db.value, "postgres:16");
        assert_eq!(&COMPOSE[db.span.clone()], "postgres:16");
        let app = find_image(COMPOSE, "app").expect("app");
        assert_eq!(app.value, "${APP_IMAGE:-reg/app:1.0}");
        let web = find_image(COMPOSE, "web").expect("web");
        assert_eq!(web.value, "nginx:1.27");
        let out = replaced(COMPOSE, &web.span, "nginx:1.28");
        assert_eq!(out, COMPOSE.replace("nginx:1.27", "nginx:1.28"));
        assert!(find_image(COMPOSE, "nope").is_err());
    }

    #[test]
    fn refuses_what_it_cannot_read_for_sure() {
        let extends = "services:\n  app:\n    extends:\n      file: base.yml\n      service: app\n";
        assert!(find_image(extends, "app").expect_err("refused").contains("extends"));
        let twice = "services:\n  app:\n    image: a:1\n    image: a:2\n";
        assert!(find_image(twice, "app").is_err());
        let anchor = "services:\n  app: &base\n    image: a:1\n";
        assert!(find_image(anchor, "app").is_err());
        let merge = "services:\n  app:\n    <<: *base\n    image: a:1\n";
        assert!(find_image(merge, "app").is_err());
        let flow = "services: {app: {image: a:1}}\n";
        assert!(find_image(flow, "app").is_err());
        let block = "services:\n  app:\n    image: >\n      a:1\n";
        assert!(find_image(block, "app").is_err());
        let none = "services:\n  app:\n    build: .\n";
        assert!(find_image(none, "app").is_err());
        let tabs = "services:\n\tapp:\n\t\timage: a:1\n";
        assert!(find_image(tabs, "app").is_err());
    }

    #[test]
    fn interpolations() {
        let i = interpolation("${APP_IMAGE:-reg/app:1.0}").expect("ok").expect("one");
        assert_eq!((i.prefix.as_str(), i.name.as_str(), i.suffix.as_str()), ("", "APP_IMAGE", ""));
        let i = interpolation("reg/app:$TAG").expect("ok").expect("one");
        assert_eq!((i.prefix.as_str(), i.name.as_str()), ("reg/app:", "TAG"));
        assert_eq!(interpolation("reg/app:1.0").expect("ok"), None);
        assert!(interpolation("${REG}/app:${TAG}").is_err());
        assert!(interpolation("${A:-${B}}").is_err());
        assert!(interpolation("${A").is_err());
    }

    #[test]
    fn env_lines_keep_quotes_and_comments() {
        let env = "# secrets\nPOSTGRES_PASSWORD=s3cret\nexport APP_IMAGE=\"reg/app:1.0\" # tracked\nTAG=1.0 # x\n";
        let e = find_env(env, "APP_IMAGE").expect("ok").expect("set");
        assert_eq!(e.value, "reg/app:1.0");
        let out = replaced(env, &e.span, "reg/app:1.1");
        assert_eq!(out, env.replace("reg/app:1.0", "reg/app:1.1"));
        assert_eq!(find_env(env, "TAG").expect("ok").expect("set").value, "1.0");
        assert_eq!(find_env(env, "NOPE").expect("ok"), None);
        assert!(find_env("A=1\nA=2\n", "A").is_err());
        assert!(find_env("A=${B}\n", "A").is_err());
    }

    #[test]
    fn retagging_keeps_the_written_form() {
        assert_eq!(retagged("gitea/gitea:1.22.6", "1.22.7").expect("ok"), "gitea/gitea:1.22.7");
        assert_eq!(
            retagged("127.0.0.1:5000/app:1.0", "1.1").expect("ok"),
            "127.0.0.1:5000/app:1.1"
        );
        assert_eq!(retagged("127.0.0.1:5000/app", "1.1").expect("ok"), "127.0.0.1:5000/app:1.1");
        assert!(retagged("app:1.0", "1.1 ; rm").is_err());
        let pinned = format!("app@sha256:{}", "f".repeat(64));
        assert!(retagged(&pinned, "1.1").is_err());
    }

    #[test]
    fn a_variable_used_for_anything_else_is_a_shared_use() {
        let text = "services:\n  app:\n    image: ${APP_IMAGE:-a:1}\n  worker:\n    image: reg/w:${APP_IMAGE}\n";
        let span = text.find("${APP_IMAGE:-a:1}").map(|i| i..i + 16).expect("span");
        assert_eq!(
            shared_use(text, &span, "APP_IMAGE", "${APP_IMAGE:-a:1}").as_deref(),
            Some("image: reg/w:${APP_IMAGE}")
        );
        let same = "services:\n  a:\n    image: ${S_IMAGE}\n  b:\n    image: \"${S_IMAGE}\"\n";
        let span = same.find("${S_IMAGE}").map(|i| i..i + 10).expect("span");
        assert_eq!(
            shared_use(same, &span, "S_IMAGE", "${S_IMAGE}"),
            None,
            "one image, two services"
        );
        let env = "services:\n  a:\n    image: ${TAG}\n    environment:\n      V: $TAG\n      W: $TAGS $$TAG\n";
        let span = env.find("${TAG}").map(|i| i..i + 6).expect("span");
        assert_eq!(shared_use(env, &span, "TAG", "${TAG}").as_deref(), Some("V: $TAG"));
        let other = "services:\n  a:\n    image: ${TAG}\n    environment:\n      W: $TAGS $$TAG ${TAGGED}\n";
        let span = other.find("${TAG}").map(|i| i..i + 6).expect("span");
        assert_eq!(shared_use(other, &span, "TAG", "${TAG}"), None);
    }
}
