//! The book in `docs/` and the README, checked as a reader meets them: the book builds with
//! mdBook, every link between pages (and into the repository) resolves, anchors included, every
//! page is in the summary, and the configuration page documents exactly the keys the config loader
//! accepts. The loader is asked itself: an unknown key in each table makes `regwatch check` list
//! the keys that table takes, so no list of keys is kept here.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use regex::Regex;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The book's Markdown pages, by file name.
fn pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(repo().join("docs/src"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.sort();
    pages
}

/// Builds the book into a scratch directory and returns it (it lives as long as the handle).
fn build() -> tempfile::TempDir {
    let mdbook = support::require(
        "mdbook",
        "scripts/setup.sh installs it (cargo install mdbook --locked --version 0.5.4 --no-default-features --features search)",
    );
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(mdbook)
        .arg("build")
        .arg(repo().join("docs"))
        .arg("--dest-dir")
        .arg(out.path())
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "mdbook build failed:\n{log}");
    // mdBook goes on past a missing include or a broken summary entry with a warning.
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(warnings.is_empty(), "mdbook build warned:\n{log}");
    out
}

/// The `id`s of a built page's elements: where its anchors may point.
fn ids(html: &str) -> BTreeSet<String> {
    let id = Regex::new(r#"\bid="([^"]+)""#).unwrap();
    id.captures_iter(html).map(|c| c[1].to_string()).collect()
}

/// The links of a Markdown text, outside code blocks and code spans: (line, target).
fn links(text: &str) -> Vec<(usize, String)> {
    let link = Regex::new(r"\]\(([^)\s]+)\)").unwrap();
    let code = Regex::new(r"`[^`]*`").unwrap();
    let mut fenced = false;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let line = code.replace_all(line, "``");
        for c in link.captures_iter(&line) {
            out.push((n + 1, c[1].to_string()));
        }
    }
    out
}

#[test]
fn the_book_builds_and_every_link_resolves() {
    let book = build();
    let src = repo().join("docs/src");
    let mut anchors: HashMap<PathBuf, BTreeSet<String>> = HashMap::new();
    for page in pages() {
        let html = book
            .path()
            .join(page.file_name().unwrap())
            .with_extension("html");
        if page.file_name().unwrap() != "SUMMARY.md" {
            anchors.insert(page.canonicalize().unwrap(), ids(&read(&html)));
        }
    }

    let mut sources = pages();
    sources.push(repo().join("README.md"));
    let mut broken = Vec::new();
    let mut checked = 0;
    for source in &sources {
        let dir = source.parent().unwrap();
        for (line, target) in links(&read(source)) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                source.clone()
            } else {
                dir.join(path)
            };
            let place = format!("{}:{line}: {target}", source.display());
            let Ok(file) = file.canonicalize() else {
                broken.push(format!("{place}: no such file"));
                continue;
            };
            if !file.starts_with(repo().canonicalize().unwrap()) {
                broken.push(format!("{place}: outside the repository"));
                continue;
            }
            if let Some(anchor) = anchor {
                match anchors.get(&file) {
                    Some(ids) if ids.contains(anchor) => {}
                    Some(_) => broken.push(format!("{place}: no such anchor")),
                    None => broken.push(format!("{place}: an anchor into a file not in the book")),
                }
            }
        }
    }
    support::report("docs: internal links checked", checked.to_string(), "> 0");
    assert!(
        checked > 20,
        "too few links found ({checked}): is the parser broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));

    // Every page is reachable from the summary, and the summary names no missing page.
    let summary = read(&src.join("SUMMARY.md"));
    let listed: BTreeSet<String> = links(&summary).into_iter().map(|(_, t)| t).collect();
    let present: BTreeSet<String> = pages()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|n| n != "SUMMARY.md")
        .collect();
    assert_eq!(listed, present, "SUMMARY.md and docs/src disagree");
}

/// The keys one table of the config takes, as the loader lists them when it meets an unknown key
/// there: `table` is the TOML that opens the table, `at` the key path the error names.
fn accepted(table: &str, at: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("probe.toml");
    std::fs::write(&config, format!("{table}zz_not_a_key = 1\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_regwatch"))
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("config error at `{at}zz_not_a_key`")),
        "the unknown key was met elsewhere than `{at}`: {stderr}"
    );
    let list = stderr
        .split_once("expected one of ")
        .unwrap_or_else(|| panic!("no list of keys in: {stderr}"))
        .1;
    let key = Regex::new(r"`([a-z0-9_]+)`").unwrap();
    key.captures_iter(list).map(|c| c[1].to_string()).collect()
}

#[test]
fn the_configuration_page_documents_exactly_the_keys_the_loader_accepts() {
    let kafka = "[kafka]\nbrokers = \"b:9092\"\n";
    let registry = "[[registry]]\nname = \"r\"\nkind = \"oci\"\nurl = \"https://r.example\"\n";
    let top = accepted("", "");
    assert_eq!(
        top,
        ["daemon", "kafka", "cluster", "registry"],
        "a new top-level table: document it and probe it here"
    );
    let tables = [
        ("[daemon]\n".to_string(), "daemon."),
        (kafka.to_string(), "kafka."),
        (format!("{kafka}[cluster]\n"), "cluster."),
        (registry.to_string(), "registry[0]."),
        (
            format!("{registry}[registry.versions]\n"),
            "registry[0].versions.",
        ),
    ];
    let mut code = BTreeSet::new();
    for (table, at) in &tables {
        let prefix = at.replace("[0]", "");
        for key in accepted(table, at) {
            code.insert(format!("{prefix}{key}"));
        }
    }
    // A sub-table is documented by its keys.
    assert!(code.remove("registry.versions"));

    let page = read(&repo().join("docs/src/configuration.md"));
    // The reference table: its first column names one key, then maybe siblings of it
    // (`registry.username` / `password` / `password_file`).
    let mut documented = BTreeSet::new();
    let span = Regex::new(r"`([a-z0-9_.]+)`").unwrap();
    for row in page.lines().filter(|l| l.starts_with("| `")) {
        let first = row.split('|').nth(1).unwrap();
        let keys: Vec<&str> = span
            .captures_iter(first)
            .map(|c| c.get(1).unwrap().as_str())
            .collect();
        let Some((head, siblings)) = keys.split_first() else {
            continue;
        };
        let parent = head.rsplit_once('.').map_or("", |(p, _)| p);
        if !parent.is_empty() {
            documented.insert(head.to_string());
        }
        for sibling in siblings {
            documented.insert(format!("{parent}.{sibling}"));
        }
    }
    let undocumented: Vec<_> = code.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "keys the loader accepts that docs/src/configuration.md does not document: {undocumented:?}"
    );
    // Anywhere on the page, a dotted name in a config table's namespace must be a key.
    let named = Regex::new(r"`((?:daemon|kafka|cluster|registry)\.[a-z0-9_.]+)`").unwrap();
    let unknown: BTreeSet<String> = named
        .captures_iter(&page)
        .map(|c| c[1].to_string())
        .filter(|k| !code.contains(k) && k != "registry.versions")
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/src/configuration.md names keys the loader refuses: {unknown:?}"
    );
    support::report(
        "docs: config keys documented / accepted",
        format!("{} / {}", documented.len(), code.len()),
        "equal sets",
    );
    assert_eq!(documented, code);
}

/// Every TOML example in the README and the book loads, as a reader would paste it (the
/// environment variables it names set). An example that leaves something out, or names a file
/// only its reader has, says so with a `# …` comment, and is not loaded.
#[test]
fn every_toml_example_loads() {
    let mut sources = pages();
    sources.push(repo().join("README.md"));
    let var = Regex::new(r"\$\{([A-Z_0-9]+)\}").unwrap();
    let mut loaded = 0;
    let mut failed = Vec::new();
    for source in &sources {
        let text = read(source);
        let mut block: Option<(usize, String)> = None;
        for (n, line) in text.lines().enumerate() {
            match &mut block {
                None if line.trim_start() == "```toml" => block = Some((n + 1, String::new())),
                Some((start, body)) if line.trim_start() == "```" => {
                    let (start, body) = (*start, std::mem::take(body));
                    block = None;
                    if body.contains("# …") {
                        continue;
                    }
                    for c in var.captures_iter(&body) {
                        // Only names the environment lacks: a `${HOME}` must not change HOME
                        // under the other tests of this binary.
                        if std::env::var_os(&c[1]).is_none() {
                            // SAFETY: no test of this binary reads a variable it lacks.
                            unsafe { std::env::set_var(&c[1], "example") };
                        }
                    }
                    loaded += 1;
                    if let Err(e) = regwatch::config::parse(&body) {
                        failed.push(format!("{}:{start}: {e}", source.display()));
                    }
                }
                Some((_, body)) => {
                    body.push_str(line.trim_start_matches("  "));
                    body.push('\n');
                }
                None => {}
            }
        }
    }
    support::report("docs: TOML examples that load", loaded.to_string(), ">= 5");
    assert!(
        loaded >= 5,
        "only {loaded} examples found: is the parser broken?"
    );
    assert!(
        failed.is_empty(),
        "examples that do not load:\n{}",
        failed.join("\n")
    );
}
