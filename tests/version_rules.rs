//! The version rules against real tags: the fixture table (`tests/fixtures/version-tags.tsv`,
//! tag names as real images publish them, each with the reading the rules of docs/src/versions.md give), the
//! cases that made `bump` untrustworthy (issue 18), and the push sequences compared side by side
//! with Flux's semver `ImagePolicy` and Renovate's `docker` versioning
//! (`tests/fixtures/version-sequences.txt`, `tests/fixtures/version-anchors.tsv`).
//!
//! Pure: the diff is driven directly, one call per scan, so hundreds of steps run in
//! milliseconds; `tests/versions.rs` runs the same rules end to end through a real registry.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use regwatch::config::TagFilter;
use regwatch::registry::Tag;
use regwatch::watch::diff::{self, ChangeKind, Snapshot};
use regwatch::watch::versions::{VersionPolicy, parse};
use semver::VersionReq;

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every real tag of the table reads as the table says: version (normalised, precision kept),
/// precision, pre-release or not, variant, revision and build; `-` for a tag that is no version.
#[test]
fn real_tags_read_as_the_fixture_table_says() {
    let table = fixture("version-tags.tsv");
    let mut rows = 0;
    let mut families = BTreeSet::new();
    let mut wrong = Vec::new();
    for line in table
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let cols: Vec<&str> = line.split('\t').collect();
        assert!(cols.len() >= 8, "short row: {line}");
        let (tag, family) = (cols[0], cols[1]);
        rows += 1;
        families.insert(family.split('/').next_back().unwrap_or(family).to_owned());
        let expected = cols[2..8].join("\t");
        let got = match parse(tag) {
            None => ["-"; 6].join("\t"),
            Some(v) => [
                v.to_string(),
                v.precision.to_string(),
                v.is_prerelease().to_string(),
                v.variant.clone(),
                v.revision
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join("."),
                v.build.clone(),
            ]
            .join("\t"),
        };
        if got != expected {
            wrong.push(format!(
                "{tag} ({family})\n   table: {expected:?}\n   read:  {got:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {rows} rows differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(rows >= 300, "the table has {rows} rows");
    for family in [
        "node",
        "python",
        "golang",
        "eclipse-temurin",
        "nginx",
        "redis",
        "postgres",
        "alpine",
        "ubi",
        "prometheus",
        "grafana",
        "traefik",
    ] {
        assert!(families.contains(family), "no {family} tags in the table");
    }
    assert!(
        families
            .iter()
            .any(|f| table.contains(&format!("\tbitnami/{f}\t"))),
        "no bitnami tags in the table"
    );
}

/// One change as a deployer gates on it.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    tag: String,
    kind: &'static str,
    bump: Option<String>,
    variant: Option<String>,
    latest: Option<bool>,
    points_to: Option<String>,
}

/// A repository pushed to step by step, diffed after every step as a scan would.
struct Repo {
    filter: TagFilter,
    tags: BTreeMap<String, String>,
    snapshot: Option<Snapshot>,
    emit_removed: bool,
}

impl Repo {
    fn new(range: Option<&str>, prerelease: bool, only_newer: bool) -> Self {
        Self::with_removals(range, prerelease, only_newer, false)
    }

    fn with_removals(
        range: Option<&str>,
        prerelease: bool,
        only_newer: bool,
        emit_removed: bool,
    ) -> Self {
        let range = range.map(|r| VersionReq::parse(r).unwrap());
        Repo {
            filter: TagFilter {
                versions: Some(VersionPolicy::new(range, prerelease, only_newer)),
                ..TagFilter::default()
            },
            tags: BTreeMap::new(),
            snapshot: None,
            emit_removed,
        }
    }

    /// Applies `ops` (`tag:digest` pushes, `-tag` deletions), then one scan.
    fn scan(&mut self, ops: &[&str]) -> Vec<Seen> {
        for op in ops {
            match op.strip_prefix('-') {
                Some(tag) => {
                    self.tags.remove(tag);
                }
                None => {
                    let (tag, digest) = op.split_once(':').expect("tag:digest");
                    self.tags
                        .insert(tag.into(), format!("sha256:{:0>64}", hex(digest)));
                }
            }
        }
        let listing = self
            .tags
            .iter()
            .map(|(name, d)| Tag {
                name: name.clone(),
                digest: Some(d.clone()),
                pushed_at: None,
            })
            .collect();
        let outcome = diff::evaluate(
            self.snapshot.as_ref(),
            listing,
            &self.filter,
            self.emit_removed,
        );
        self.snapshot = Some(outcome.snapshot);
        // Read as the event's `data` fields, the way a deployer sees them.
        outcome
            .changes
            .into_iter()
            .map(|c| {
                let data = serde_json::to_value(c.details()).unwrap();
                let text = |key: &str| data[key].as_str().map(str::to_owned);
                Seen {
                    kind: match c.kind() {
                        ChangeKind::Added => "added",
                        ChangeKind::Updated => "updated",
                        ChangeKind::Removed => "removed",
                        ChangeKind::SignatureAdded => "signature",
                        _ => "other",
                    },
                    tag: c.tag().to_owned(),
                    bump: text("bump"),
                    variant: text("variant"),
                    latest: data["latest"].as_bool(),
                    points_to: text("points_to"),
                }
            })
            .collect()
    }

    /// One scan, and the one change it must report.
    fn one(&mut self, ops: &[&str]) -> Seen {
        let mut seen = self.scan(ops);
        assert_eq!(seen.len(), 1, "after {ops:?}: {seen:?}");
        seen.remove(0)
    }
}

/// A digest label as hex, so that labels name distinct digests.
fn hex(label: &str) -> String {
    label.bytes().map(|b| format!("{b:02x}")).collect()
}

fn bump(s: &Seen) -> Option<&str> {
    s.bump.as_deref()
}

/// `1.9.0` → `2.0.0-rc.1` → `2.0.0`: the GA is a major release whether or not the rc is still
/// listed, so a gate that auto-approves all but `major` never ships it unseen.
#[test]
fn a_major_ga_after_its_release_candidate_is_major() {
    for delete_rc_first in [false, true] {
        let mut repo = Repo::new(None, true, false);
        repo.scan(&["1.9.0:a"]);
        assert_eq!(bump(&repo.one(&["2.0.0-rc.1:b"])), Some("prerelease"));
        if delete_rc_first {
            assert!(repo.scan(&["-2.0.0-rc.1"]).is_empty());
        }
        let ga = repo.one(&["2.0.0:c"]);
        assert_eq!(
            (bump(&ga), ga.latest),
            (Some("major"), Some(true)),
            "{delete_rc_first}"
        );
    }
}

/// Temurin's flavours are variants of one release: the `jre` pushed a cycle after the `jdk` is
/// its own line, reported, and neither is older than the other.
#[test]
fn temurin_flavours_are_variants_each_reported() {
    let mut repo = Repo::new(None, false, true);
    repo.scan(&["21.0.1_12-jdk-jammy:a", "21.0.1_12-jre-jammy:b"]);
    let jdk = repo.one(&["21.0.2_13-jdk-jammy:c"]);
    assert_eq!(
        (bump(&jdk), jdk.variant.as_deref()),
        (Some("patch"), Some("jdk-jammy"))
    );
    let jre = repo.one(&["21.0.2_13-jre-jammy:d"]);
    assert_eq!(
        (bump(&jre), jre.variant.as_deref()),
        (Some("patch"), Some("jre-jammy"))
    );
    assert_eq!(jre.latest, Some(true));
}

/// Spring milestones and `next` are pre-releases: not reported while `prerelease = false`, and
/// never a `first`/`latest` release of a made-up variant.
#[test]
fn milestones_and_next_are_prereleases() {
    let mut repo = Repo::new(None, false, false);
    repo.scan(&["6.1.0:a", "1.0.0:b"]);
    assert!(
        repo.scan(&["6.2.0-M1:c", "6.2.0-RC1:d", "1.0.1-next.1:e"])
            .is_empty()
    );
    let mut with_pre = Repo::new(None, true, false);
    with_pre.scan(&["6.1.0:a"]);
    let m1 = with_pre.one(&["6.2.0-M1:c"]);
    assert_eq!(
        (bump(&m1), m1.variant.as_deref()),
        (Some("prerelease"), Some(""))
    );
    assert_eq!(bump(&with_pre.one(&["6.2.0-RC1:d"])), Some("prerelease"));
    assert_eq!(bump(&with_pre.one(&["6.2.0:e"])), Some("minor"));
}

/// Bitnami's `-rN` is a rebuild of the same version and variant, ordered after it: not a new
/// variant each time, and `only_newer` keeps out an older backport.
#[test]
fn bitnami_revisions_are_rebuilds() {
    let mut repo = Repo::new(None, false, true);
    repo.scan(&["1.25.3-debian-12-r5:a", "1.25.3:a"]);
    let r6 = repo.one(&["1.25.3-debian-12-r6:b"]);
    assert_eq!(
        (bump(&r6), r6.variant.as_deref(), r6.latest),
        (Some("rebuild"), Some("debian-12"), Some(true))
    );
    assert!(
        repo.scan(&["1.25.2-debian-12-r9:c"]).is_empty(),
        "an older backport"
    );
    assert_eq!(bump(&repo.one(&["1.25.4-debian-12-r0:d"])), Some("patch"));
}

/// Red Hat's build numbers: `8.9-1107` is release 8.9, build 1107, reported by default.
#[test]
fn red_hat_builds_are_releases_with_revisions() {
    let mut repo = Repo::new(None, false, true);
    repo.scan(&["8.8-1072:a"]);
    assert_eq!(bump(&repo.one(&["8.9-1107:b"])), Some("minor"));
    assert_eq!(bump(&repo.one(&["8.9-1108:c"])), Some("rebuild"));
    // The unnumbered `8.9` floats over its builds.
    let alias = repo.one(&["8.9:c"]);
    assert_eq!(
        (bump(&alias), alias.points_to.as_deref()),
        (Some("floating"), Some("8.9-1108"))
    );
}

/// Precision is kept: `2.1` landing a cycle before `2.1.0` does not make `2.1.0` older, and
/// `only_newer` reports it.
#[test]
fn an_alias_landing_first_does_not_hide_its_version() {
    let mut repo = Repo::new(None, false, true);
    repo.scan(&["2.0.5:a"]);
    assert_eq!(bump(&repo.one(&["2.1:b"])), Some("minor"));
    let full = repo.one(&["2.1.0:b"]);
    assert_eq!((bump(&full), full.latest), (Some("minor"), Some(true)));
}

/// A re-push of a version is a rebuild, whatever aliases exist; a floating tag that moves is
/// `floating` and names the version it now points to.
#[test]
fn repushes_are_rebuilds_and_moving_aliases_are_floating() {
    let mut repo = Repo::new(None, false, true);
    repo.scan(&["1.2.2:a", "1.2.3:b", "v1.2.3:b", "1.2:b", "1:b"]);
    assert_eq!(bump(&repo.one(&["1.2.3:c"])), Some("rebuild"));
    let seen = repo.scan(&["1.2.4:d", "1.2:d", "1:d"]);
    let by_tag: BTreeMap<&str, &Seen> = seen.iter().map(|s| (s.tag.as_str(), s)).collect();
    assert_eq!(bump(by_tag["1.2.4"]), Some("patch"));
    for alias in ["1", "1.2"] {
        let s = by_tag[alias];
        assert_eq!(
            (s.kind, bump(s), s.points_to.as_deref(), s.latest),
            ("updated", Some("floating"), Some("1.2.4"), Some(true)),
            "{alias}"
        );
    }
}

/// Variants compare case-insensitively: `-Alpine` is the `-alpine` line.
#[test]
fn variants_ignore_case() {
    let mut repo = Repo::new(None, false, true);
    repo.scan(&["1.2.3-alpine:a"]);
    assert!(
        repo.scan(&["1.2.2-Alpine:b"]).is_empty(),
        "below 1.2.3-alpine"
    );
    let up = repo.one(&["1.2.4-Alpine:c"]);
    assert_eq!(
        (bump(&up), up.variant.as_deref()),
        (Some("patch"), Some("alpine"))
    );
}

/// A snapshot written before these rules, holding tags whose reading changed (Red Hat builds,
/// milestones, a two-number version, Temurin builds), reads as it is: the same listing again
/// is no change, no baseline, and the next push is judged by the new rules.
#[test]
fn a_snapshot_from_before_the_rules_emits_nothing() {
    let mut repo = Repo::new(None, false, true);
    let old = [
        "8.9-1107:a",
        "6.2.0-M1:b",
        "2.1:c",
        "21.0.2_13-jdk-jammy:d",
        "2.0.0-1:e",
    ];
    repo.scan(&old);
    let stored = serde_json::to_string(repo.snapshot.as_ref().unwrap()).unwrap();
    let mut reloaded = Repo::new(None, false, true);
    reloaded.tags = repo.tags.clone();
    reloaded.snapshot = Some(serde_json::from_str(&stored).unwrap());
    assert!(reloaded.scan(&[]).is_empty());
    assert_eq!(
        bump(&reloaded.one(&["8.10-1:f"])),
        Some("minor"),
        "above 8.9-1107"
    );
}

/// One step of a push sequence, as regwatch and the two anchors answer it.
#[derive(Debug)]
struct Step {
    sequence: String,
    step: usize,
    tag: String,
    /// regwatch: `report bump latest` for the pushed tag (`-` when not reported).
    regwatch: String,
    /// Flux's semver `ImagePolicy` selection after the step.
    flux: String,
    /// Renovate's `docker` versioning proposal for the pushed tag.
    renovate: String,
}

/// The 20 push sequences of `version-sequences.txt` replayed through regwatch, next to what
/// Flux and Renovate answered for the same steps (`version-anchors.tsv`, generated by running
/// their own libraries: `scripts/anchors/run.sh`).
fn side_by_side() -> Vec<Step> {
    let anchors = fixture("version-anchors.tsv");
    let anchor: BTreeMap<(String, usize), Vec<String>> = anchors
        .lines()
        .filter(|l| l.starts_with("seq\t") && !l.starts_with("seq\tname"))
        .map(|l| {
            let cols: Vec<String> = l.split('\t').map(str::to_owned).collect();
            ((cols[1].clone(), cols[2].parse().unwrap()), cols)
        })
        .collect();
    let mut steps = Vec::new();
    let sequences = fixture("version-sequences.txt");
    for block in sequences.split("## ").skip(1) {
        let mut lines = block.lines().filter(|l| !l.trim().is_empty());
        let name = lines.next().unwrap().trim().to_owned();
        let policy = lines.next().unwrap();
        let setting = |key: &str| {
            policy
                .split(' ')
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    // `range=` takes the rest of the line: ranges hold spaces.
                    policy
                        .split_once("range=")
                        .map(|(_, r)| r.to_owned())
                        .unwrap()
                })
        };
        let range = policy
            .split_once("range=")
            .map(|(_, r)| r.trim())
            .filter(|r| !r.is_empty());
        let mut repo = Repo::new(
            range,
            setting("prerelease") == "true",
            setting("only_newer") == "true",
        );
        let baseline: Vec<&str> = lines.next().unwrap().split(' ').skip(1).collect();
        assert!(
            repo.scan(&baseline).is_empty(),
            "{name}: a baseline reports nothing"
        );
        for (i, line) in lines.enumerate() {
            let op = line
                .strip_prefix("push ")
                .unwrap_or_else(|| panic!("{name}: {line}"));
            let tag = op.split_once(':').unwrap().0.to_owned();
            let seen = repo.scan(&[op]);
            let regwatch = seen
                .iter()
                .find(|s| s.tag == tag)
                .map_or("-".to_owned(), |s| {
                    format!(
                        "{} {}",
                        s.bump.as_deref().unwrap_or("null"),
                        if s.latest == Some(true) { "latest" } else { "" }
                    )
                    .trim()
                    .to_owned()
                });
            let cols = &anchor[&(name.clone(), i + 1)];
            assert_eq!(
                cols[3],
                tag,
                "{name} step {}: the anchors replayed another tag",
                i + 1
            );
            steps.push(Step {
                sequence: name.clone(),
                step: i + 1,
                tag,
                regwatch,
                flux: cols[4].clone(),
                renovate: cols[5].clone(),
            });
        }
    }
    steps
}

/// Where regwatch and an anchor answer a step differently: Flux "moves to the pushed tag" (its
/// selection after the step is the tag) against regwatch reporting it as `latest`; Renovate's
/// update type (`major`, `minor`, `patch` or none) against regwatch's `bump` when it is one of
/// those and the tag is reported.
fn differences(steps: &[Step]) -> BTreeSet<(String, usize, &'static str)> {
    let mut out = BTreeSet::new();
    for s in steps {
        let reported_latest = s.regwatch.ends_with("latest");
        if (s.flux == s.tag) != reported_latest {
            out.insert((s.sequence.clone(), s.step, "flux"));
        }
        let ours = s
            .regwatch
            .split(' ')
            .next()
            .filter(|b| ["major", "minor", "patch"].contains(b));
        let theirs = Some(s.renovate.as_str()).filter(|u| ["major", "minor", "patch"].contains(u));
        if ours != theirs {
            out.insert((s.sequence.clone(), s.step, "renovate"));
        }
    }
    out
}

/// Every step where regwatch answers differently from Flux or Renovate is listed, with the reason,
/// in `tests/fixtures/version-differences.tsv`, and every reason is explained in docs/src/versions.md's
/// comparison table: a new difference, or one that went away, fails here until it is reviewed.
#[test]
fn every_difference_with_flux_and_renovate_is_explained() {
    let steps = side_by_side();
    assert!(steps.len() >= 80, "{} steps", steps.len());
    let found = differences(&steps);
    let listed_text = fixture("version-differences.tsv");
    let listed: BTreeMap<(String, usize, String), String> = listed_text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            (
                (c[0].to_owned(), c[1].parse().unwrap(), c[2].to_owned()),
                c[3].to_owned(),
            )
        })
        .collect();
    let by_step: BTreeMap<(String, usize), &Step> = steps
        .iter()
        .map(|s| ((s.sequence.clone(), s.step), s))
        .collect();
    let show = |(seq, step, anchor): &(String, usize, &str)| {
        let s = by_step[&(seq.clone(), *step)];
        format!(
            "{seq}\t{step}\t{anchor}\t?\t# {}: regwatch {:?}, flux {:?}, renovate {:?}",
            s.tag, s.regwatch, s.flux, s.renovate
        )
    };
    let unexplained: Vec<String> = found
        .iter()
        .filter(|(q, s, a)| !listed.contains_key(&(q.clone(), *s, a.to_string())))
        .map(show)
        .collect();
    assert!(
        unexplained.is_empty(),
        "differences without a reason:\n{}",
        unexplained.join("\n")
    );
    let gone: Vec<_> = listed
        .keys()
        .filter(|(q, s, a)| {
            !found
                .iter()
                .any(|f| (&f.0, f.1, f.2) == (q, *s, a.as_str()))
        })
        .collect();
    assert!(
        gone.is_empty(),
        "listed differences that no longer occur: {gone:?}"
    );
    let page = versions_page();
    for reason in listed.values().collect::<BTreeSet<_>>() {
        assert!(
            page.contains(&format!("| `{reason}` |")),
            "reason {reason} is not in the table of docs/src/versions.md"
        );
    }
    // The table a reader can scan, printed with `--nocapture`.
    for s in &steps {
        println!(
            "{:<28} {:>2} {:<28} regwatch {:<18} flux {:<24} renovate {}",
            s.sequence, s.step, s.tag, s.regwatch, s.flux, s.renovate
        );
    }
}

/// A snapshot stored by the rules before `version_rules` 1 (no `version_rules` field) holds
/// tags those rules never reported but these do: Red Hat's `8.9-1107` and a Debian-style
/// `2.0.0-1` were pre-releases then. Never announced, their removal or signature is no news
/// after the upgrade; a build pushed after it is reported, and so is its removal.
#[test]
fn an_upgrade_does_not_announce_what_the_earlier_rules_never_reported() {
    let mut repo = Repo::with_removals(None, false, true, true);
    let old = ["8.9-1107:a", "2.0.0-1:b", "1.0.0:c"];
    repo.scan(&old);
    // As the earlier release stored it: no `version_rules`, nothing held back.
    let mut stored = serde_json::to_value(repo.snapshot.as_ref().unwrap()).unwrap();
    stored.as_object_mut().unwrap().remove("version_rules");
    stored.as_object_mut().unwrap().remove("held_back");
    let old_snapshot: Snapshot = serde_json::from_value(stored).unwrap();
    assert_eq!(old_snapshot.version_rules, 0);
    let mut upgraded = Repo::with_removals(None, false, true, true);
    upgraded.tags = repo.tags.clone();
    upgraded.snapshot = Some(old_snapshot);
    assert!(upgraded.scan(&[]).is_empty(), "reading it is no news");
    let b = format!("sha256:{:0>64}", hex("b"));
    let signature = format!("{}.sig", b.replacen(':', "-", 1));
    assert!(
        upgraded.scan(&[&format!("{signature}:s")]).is_empty(),
        "a signature of 2.0.0-1, never announced"
    );
    assert!(
        upgraded.scan(&["-8.9-1107"]).is_empty(),
        "never announced, so never removed"
    );
    assert_eq!(
        bump(&upgraded.one(&["8.10-1:d"])),
        Some("major"),
        "above 2.0.0-1"
    );
    assert_eq!(upgraded.one(&["-8.10-1"]).kind, "removed");
    assert_eq!(
        upgraded.one(&["-1.0.0"]).kind,
        "removed",
        "reported before and now"
    );
}

/// The fixture table beside Flux's and Renovate's reading of the same tags (from
/// `version-anchors.tsv`): every tag of the table has their answer recorded (the anchors are
/// regenerated when the table changes), and the counts docs/src/versions.md quotes hold. Printed in full
/// with `--nocapture`.
#[test]
fn fixture_tags_side_by_side_with_flux_and_renovate() {
    let anchors = fixture("version-anchors.tsv");
    let theirs: BTreeMap<&str, Vec<&str>> = anchors
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("seq") && !l.starts_with("tag\t"))
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols[0], cols)
        })
        .collect();
    let table = fixture("version-tags.tsv");
    let (mut ours, mut flux, mut renovate, mut ours_release, mut flux_release) = (0, 0, 0, 0, 0);
    let mut missing = Vec::new();
    for line in table
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let tag = line.split('\t').next().unwrap();
        let Some(cols) = theirs.get(tag) else {
            missing.push(tag);
            continue;
        };
        let read = parse(tag);
        ours += usize::from(read.is_some());
        ours_release += usize::from(read.as_ref().is_some_and(|v| !v.is_prerelease()));
        flux += usize::from(cols[1] == "true");
        flux_release += usize::from(cols[1] == "true" && cols[3] == "false");
        renovate += usize::from(cols[4] == "true");
        println!(
            "{tag:<48} regwatch {:<28} flux {:<24} renovate {}",
            read.map_or("-".into(), |v| format!("{v} [{}]", v.variant)),
            cols[2],
            cols[6]
        );
    }
    assert!(
        missing.is_empty(),
        "tags without the anchors' answer (run scripts/anchors/run.sh): {missing:?}"
    );
    println!(
        "versions: regwatch {ours} ({ours_release} releases), Flux {flux} ({flux_release} releases), Renovate {renovate}"
    );
    let page = versions_page();
    let quoted = format!(
        "regwatch reads {ours} of them as versions ({ours_release} releases), Flux {flux} ({flux_release} releases), Renovate {renovate}"
    );
    assert!(
        page.contains(&quoted),
        "docs/src/versions.md should say: {quoted}"
    );
}

/// The book's page on versions, whose tables and figures these tests keep true.
fn versions_page() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/src/versions.md"))
        .unwrap()
}
