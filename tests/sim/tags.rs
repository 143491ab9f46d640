//! The tag names the generator draws from, and how each one reads as a version.
//!
//! Real tags come from the fixture table `tests/fixtures/version-tags.tsv`, a curated set of its
//! families; the model reads them from the table's expected columns (version, precision,
//! pre-release, variant, revision), never through regwatch's parser. Some names are derived from
//! table rows by the README's rules ("How a tag is read"): a leading `v`/`V` (rule 1: dropped), a
//! variant written in mixed case (rule 4: lower-cased), and the floating aliases of a release
//! (`1.21.6-bookworm` gives `1-bookworm` and `1.21-bookworm`: the written numbers cut short, the
//! variant kept).

use std::collections::BTreeMap;
use std::sync::OnceLock;

/// How a tag reads, as the table (or a rule applied to a table row) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// The normalised version, as `data.version` must say it (`3.13.0-alpha.3`, `21.0.2+13`).
    pub version: String,
    /// The written numbers (`[2, 1]` for `2.1`): their count is the precision.
    pub numbers: Vec<u64>,
    /// The pre-release identifiers; empty for a release.
    pub pre: Vec<String>,
    /// The revision (rebuild counter) numbers; empty for none.
    pub revision: Vec<u64>,
    /// The variant, lower-cased; empty for none.
    pub variant: String,
}

impl Reading {
    /// Whether it is a release (no pre-release).
    pub fn is_release(&self) -> bool {
        self.pre.is_empty()
    }
}

/// One name of the table.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its reading; `None` for a tag that is no version.
    pub reading: Option<Reading>,
    /// The floating aliases that this release's name gives (shortest first).
    pub aliases: Vec<String>,
    /// Its spellings: the names that differ from it only by a leading `v`/`V` or the case of
    /// letters, itself included (one version, one variant).
    pub spellings: Vec<String>,
}

/// The families of the fixture table the runs draw from: floating aliases (`node`, `python`,
/// `golang`, `redis`, `postgres`, `alpine`, `traefik`), pre-releases of every spelling (`python`,
/// `golang`, Spring's milestones and snapshots, Prometheus), several releases of one line
/// (`alpine`, `traefik`, Home Assistant's calendar versions, Prometheus, Spring), build metadata
/// (Temurin), revisions (Bitnami, Red Hat, linuxserver, etcd), variants everywhere, and tags that
/// are no versions (`org/app`, `traefik`'s code names).
pub const FAMILIES: [&str; 17] = [
    "node",
    "python",
    "golang",
    "eclipse-temurin",
    "redis",
    "postgres",
    "bitnami/nginx",
    "springcloud/spring-cloud-dataflow-server",
    "ubi9/ubi-minimal",
    "lscr.io/linuxserver/swag",
    "org/app",
    "alpine",
    "traefik",
    "ubi8/ubi",
    "prom/prometheus",
    "homeassistant/home-assistant",
    "registry.k8s.io/etcd",
];

/// Rows left out: where the README's rules leave the order undecided. `9.3-1361.1699548032`
/// beside `9.3-1361`: whether a tag that has a revision can be a floating alias of one with a
/// longer revision is not said.
const LEFT_OUT: [&str; 1] = ["9.3-1361.1699548032"];

/// The tags of the sim's first pool (before the families), read by the README's rules: `v1` and
/// `v2` are `1` and `2` (rule 1), `v3-rc` is the pre-release `3-rc` (rule 4); `latest`, `z` and
/// `t000…` are no versions.
pub fn base_pool() -> Vec<String> {
    vec![
        "v1".into(),
        "v2".into(),
        "v3-rc".into(),
        "latest".into(),
        "z".into(),
        format!("t{}", "0".repeat(127)),
    ]
}

/// Every name and its reading, and the names of each family (table rows and their `v`/mixed-case
/// spellings; the aliases are reached by the alias operation).
pub struct Table {
    /// Name to entry.
    pub entries: BTreeMap<String, Entry>,
    /// Per family (as in `FAMILIES`), its names.
    pub families: Vec<Vec<String>>,
}

/// The table, built once.
pub fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(build)
}

/// How `tag` reads; panics for a name the table does not hold.
pub fn reading(tag: &str) -> Option<&'static Reading> {
    table()
        .entries
        .get(tag)
        .unwrap_or_else(|| panic!("{tag:?} is not in the sim's tag table"))
        .reading
        .as_ref()
}

/// A family's names split in two: those of its main variant (the empty one when it has versions
/// there, else its largest), and the rest.
pub fn main_variant(family: usize) -> (Vec<String>, Vec<String>) {
    let names = &table().families[family];
    let variant = |n: &String| reading(n).map(|r| r.variant.clone());
    let mut sizes: BTreeMap<String, usize> = BTreeMap::new();
    for v in names.iter().filter_map(variant) {
        *sizes.entry(v).or_default() += 1;
    }
    let main = if sizes.contains_key("") {
        String::new()
    } else {
        sizes
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(v, _)| v.clone())
            .unwrap_or_default()
    };
    names
        .iter()
        .cloned()
        .partition(|n| variant(n).as_deref() == Some(&main))
}

fn numbers(s: &str) -> Vec<u64> {
    s.split('.')
        .map(|n| n.parse().unwrap_or_else(|_| panic!("number {n:?}")))
        .collect()
}

/// A reading from the table's columns.
fn from_columns(cols: &[&str]) -> Option<Reading> {
    if cols[2] == "-" {
        return None;
    }
    let version = cols[2].to_owned();
    let without_build = version.split_once('+').map_or(&*version, |(v, _)| v);
    let (core, pre) = match without_build.split_once('-') {
        Some((core, pre)) => (core, pre.split('.').map(str::to_owned).collect()),
        None => (without_build, Vec::new()),
    };
    let reading = Reading {
        numbers: numbers(core),
        pre,
        revision: if cols[6].is_empty() {
            Vec::new()
        } else {
            numbers(cols[6])
        },
        variant: cols[5].to_owned(),
        version,
    };
    assert_eq!(reading.numbers.len().to_string(), cols[3], "{cols:?}");
    assert_eq!((!reading.is_release()).to_string(), cols[4], "{cols:?}");
    Some(reading)
}

/// `alpine3.19` → `Alpine3.19`, `bookworm-slim` → `Bookworm-Slim`.
fn capitalised(variant: &str) -> String {
    variant
        .split('-')
        .map(|s| {
            let mut c = s.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// The aliases a release's name gives: its written numbers cut short (rule 1: precision kept;
/// numbers lose leading zeros), whatever follows them (the variant, rule 4) kept. A name with a
/// revision (rule 4: `r<n>`, `ls<n>`, numbers) gives its numbers without it as well, as `8.9`
/// stands beside `8.9-1107`. Only for a name that is `[v]<numbers>[-<variant>][<revision>]`: no
/// build or pre-release.
fn aliases_of(tag: &str, r: &Reading) -> Vec<String> {
    if !r.is_release() || r.version.contains('+') {
        return Vec::new();
    }
    let rev: Vec<String> = r.revision.iter().map(u64::to_string).collect();
    let suffixes = match rev.as_slice() {
        [] => vec![String::new()],
        [a] => vec![format!("-r{a}"), format!("-ls{a}"), format!("-{a}")],
        [a, b] => vec![format!("-{a}.{b}"), format!("-r{a}-ls{b}")],
        _ => Vec::new(),
    };
    let Some(stem) = suffixes.iter().find_map(|s| tag.strip_suffix(s.as_str())) else {
        return Vec::new();
    };
    let (prefix, rest) = match stem.chars().next() {
        Some(c @ ('v' | 'V')) => (c.to_string(), &stem[1..]),
        _ => (String::new(), stem),
    };
    let end = rest
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(rest.len());
    let (core, tail) = rest.split_at(end);
    let written: Vec<&str> = core.split('.').collect();
    let tail_ok = tail.is_empty()
        || tail
            .strip_prefix('-')
            .is_some_and(|v| v.to_ascii_lowercase() == r.variant);
    if written.len() != r.numbers.len() || !tail_ok {
        return Vec::new();
    }
    let longest = written.len() - usize::from(rev.is_empty());
    (1..=longest)
        .map(|p| format!("{prefix}{}{tail}", written[..p].join(".")))
        .collect()
}

fn alias_reading(r: &Reading, p: usize) -> Reading {
    let numbers = r.numbers[..p].to_vec();
    Reading {
        version: numbers
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("."),
        numbers,
        pre: Vec::new(),
        revision: Vec::new(),
        variant: r.variant.clone(),
    }
}

fn insert(entries: &mut BTreeMap<String, Entry>, tag: String, reading: Option<Reading>) {
    let aliases = reading
        .as_ref()
        .map_or_else(Vec::new, |r| aliases_of(&tag, r));
    if let Some(was) = entries.get(&tag) {
        assert_eq!(
            was.reading, reading,
            "{tag} reads two ways in the sim's table"
        );
        return;
    }
    entries.insert(
        tag,
        Entry {
            reading,
            aliases,
            spellings: Vec::new(),
        },
    );
}

/// What the spellings of a name share: no leading `v`/`V`, lower case.
fn canonical(tag: &str) -> String {
    tag.strip_prefix(['v', 'V'])
        .filter(|t| t.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or(tag)
        .to_ascii_lowercase()
}

fn build() -> Table {
    let text = include_str!("../fixtures/version-tags.tsv");
    let mut entries = BTreeMap::new();
    let mut families = vec![Vec::new(); FAMILIES.len()];
    for tag in base_pool() {
        let reading = match tag.as_str() {
            "v1" | "v2" => Some(Reading {
                version: tag[1..].to_owned(),
                numbers: numbers(&tag[1..]),
                pre: Vec::new(),
                revision: Vec::new(),
                variant: String::new(),
            }),
            "v3-rc" => Some(Reading {
                version: "3-rc".into(),
                numbers: vec![3],
                pre: vec!["rc".into()],
                revision: Vec::new(),
                variant: String::new(),
            }),
            _ => None,
        };
        insert(&mut entries, tag, reading);
    }
    for (i, line) in text
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .enumerate()
    {
        let cols: Vec<&str> = line.split('\t').collect();
        let Some(family) = FAMILIES.iter().position(|f| *f == cols[1]) else {
            continue;
        };
        if LEFT_OUT.contains(&cols[0]) {
            continue;
        }
        let tag = cols[0].to_owned();
        let reading = from_columns(&cols);
        // Spellings derived by a rule (not from rows whose reading the table itself doubts): a
        // leading `v` or `V` (rule 1), the variant in mixed case (rule 4). All are in the table;
        // some are in the family's names too.
        let mut spellings = Vec::new();
        let doubted = cols.get(9).is_some_and(|n| n.starts_with("RULE?"));
        if let Some(r) = reading.as_ref().filter(|_| !doubted) {
            let mut stems = vec![tag.clone()];
            if !r.variant.is_empty()
                && let Some(stem) = tag.strip_suffix(&format!("-{}", r.variant))
            {
                stems.push(format!("{stem}-{}", capitalised(&r.variant)));
            }
            for stem in stems {
                if stem.starts_with(|c: char| c.is_ascii_digit()) {
                    spellings.push(format!("v{stem}"));
                    spellings.push(format!("V{stem}"));
                }
                spellings.push(stem);
            }
            spellings.retain(|s| *s != tag);
        }
        for (j, name) in std::iter::once(tag.clone()).chain(spellings).enumerate() {
            insert(&mut entries, name.clone(), reading.clone());
            // The row's own name, and every other row one of its spellings.
            if (j == 0 || (i + j) % 3 == 0) && !families[family].contains(&name) {
                families[family].push(name);
            }
        }
    }
    // The aliases, read as the release they cut short.
    let releases: Vec<(String, Reading)> = entries
        .iter()
        .filter(|(_, e)| !e.aliases.is_empty())
        .map(|(t, e)| (t.clone(), e.reading.clone().expect("a release")))
        .collect();
    for (tag, r) in releases {
        for (p, alias) in aliases_of(&tag, &r).into_iter().enumerate() {
            insert(&mut entries, alias, Some(alias_reading(&r, p + 1)));
        }
    }
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for tag in entries.keys() {
        groups.entry(canonical(tag)).or_default().push(tag.clone());
    }
    for group in groups.into_values() {
        for tag in &group {
            let entry = entries.get_mut(tag).unwrap();
            entry.spellings = group.clone();
        }
        let first = &entries[&group[0]].reading;
        for tag in &group {
            assert_eq!(
                &entries[tag].reading, first,
                "{tag} and {} read two ways",
                group[0]
            );
        }
    }
    Table { entries, families }
}
