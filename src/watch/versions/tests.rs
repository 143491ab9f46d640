//! Table-driven tests of the version rules. The real-tag fixture table and the push sequences
//! compared with Flux and Renovate are in `tests/version_rules.rs`.

use semver::VersionReq;

use super::*;

fn policy(range: Option<&str>, prerelease: bool, only_newer: bool) -> VersionPolicy {
    VersionPolicy::new(
        range.map(|r| VersionReq::parse(r).unwrap()),
        prerelease,
        only_newer,
    )
}

/// `new_tag` pushed (on a digest of its own) after `before`.
fn judge(p: &VersionPolicy, before: &[&str], new_tag: &str) -> Verdict {
    let after = before.iter().chain([&new_tag]).map(|t| (*t, Some(*t)));
    let judged = [(new_tag, Some(new_tag))];
    VersionIndex::new(p, before.iter().copied(), after, &judged).judge(new_tag, Some(new_tag), true)
}

/// (version, variant) of a tag.
fn norm(tag: &str) -> Option<(String, String)> {
    parse(tag).map(|v| (v.to_string(), v.variant))
}

#[test]
fn tags_read_by_the_rules() {
    // tag, version, variant, precision, revision
    let table: &[(&str, &str, &str, u8, &[u64])] = &[
        ("v1.2.3", "1.2.3", "", 3, &[]),
        ("V1", "1", "", 1, &[]),
        ("2.1", "2.1", "", 2, &[]),
        ("2024.01.15", "2024.1.15", "", 3, &[]),
        ("1.2.3-alpine", "1.2.3", "alpine", 3, &[]),
        ("1.2.3-Alpine", "1.2.3", "alpine", 3, &[]),
        ("3.12-slim-bookworm", "3.12", "slim-bookworm", 2, &[]),
        ("1.2.3-rc.1", "1.2.3-rc.1", "", 3, &[]),
        ("1.2.3-RC10", "1.2.3-rc.10", "", 3, &[]),
        ("1.0.0-beta-2", "1.0.0-beta.2", "", 3, &[]),
        ("1.2.3-rc.01", "1.2.3-rc.1", "", 3, &[]),
        ("1.2.3-rc.1-alpine", "1.2.3-rc.1", "alpine", 3, &[]),
        ("1.2.3-alpine-rc.1", "1.2.3-rc.1", "alpine", 3, &[]),
        ("13.0.1-ubi10-rc", "13.0.1-rc", "ubi10", 3, &[]),
        ("3.8.3-1-SNAPSHOT", "3.8.3-snapshot", "", 3, &[1]),
        ("1.2.3-develop", "1.2.3", "develop", 3, &[]),
        ("1.2.3-preview2", "1.2.3-preview.2", "", 3, &[]),
        ("6.2.0-M1", "6.2.0-m.1", "", 3, &[]),
        ("6.2.0-milestone.3", "6.2.0-milestone.3", "", 3, &[]),
        ("1.0.0-next.1", "1.0.0-next.1", "", 3, &[]),
        ("3.2.0-SNAPSHOT", "3.2.0-snapshot", "", 3, &[]),
        (
            "3.13.0rc1-slim-bookworm",
            "3.13.0-rc.1",
            "slim-bookworm",
            3,
            &[],
        ),
        ("3.13.0a3", "3.13.0-alpha.3", "", 3, &[]),
        ("1.22rc1", "1.22-rc.1", "", 2, &[]),
        ("21.0.2_13-jdk-jammy", "21.0.2+13", "jdk-jammy", 3, &[]),
        ("21.0.2_13-JRE-jammy", "21.0.2+13", "jre-jammy", 3, &[]),
        ("1.2.3+build.5", "1.2.3+build.5", "", 3, &[]),
        ("1.2.3-alpine_b1", "1.2.3+b1", "alpine", 3, &[]),
        ("1.25.3-debian-12-r5", "1.25.3", "debian-12", 3, &[5]),
        ("1.25.3-r0", "1.25.3", "", 3, &[0]),
        ("8.9-1107", "8.9", "", 2, &[1107]),
        ("8.9-1107.1705420509", "8.9", "", 2, &[1107, 1705420509]),
        ("2.0.0-1", "2.0.0", "", 3, &[1]),
        ("20", "20", "", 1, &[]),
        ("2023.3.20240131.0", "2023.3.20240131.0", "", 4, &[]),
        (
            "8.3.3RC1-fpm-alpine3.19",
            "8.3.3-rc.1",
            "fpm-alpine3.19",
            3,
            &[],
        ),
        ("2.0.0.RELEASE", "2.0.0", "", 3, &[]),
        ("2.2.0.M1", "2.2.0-m.1", "", 3, &[]),
        ("v20190221-d14461a", "20190221+d14461a", "", 1, &[]),
        (
            "v20240130-9db6d59ca0-master",
            "20240130+9db6d59ca0",
            "master",
            1,
            &[],
        ),
        ("2.11.0-ls319", "2.11.0", "", 3, &[319]),
        ("1.24.0-r7-ls261", "1.24.0", "", 3, &[7, 261]),
        ("v20240130-ea12345", "20240130+ea12345", "", 1, &[]),
        ("21-ea-35-jdk", "21-ea.35", "jdk", 1, &[]),
    ];
    for (tag, version, variant, precision, revision) in table {
        let v = parse(tag).unwrap_or_else(|| panic!("{tag} is a version"));
        assert_eq!(
            (
                v.to_string().as_str(),
                v.variant.as_str(),
                v.precision,
                v.revision.as_slice()
            ),
            (*version, *variant, *precision, *revision),
            "{tag}"
        );
    }
    for not_a_version in [
        "latest",
        "main",
        "v",
        "sha-1a2b3c",
        "sha256-0a1b.sig",
        "1.2.3.4.5",
        "8u402-b06",
        "1.2.3x",
        "1.2.3a",
        "1..2",
        ".1",
        "1.",
        "1.2.3-",
        "1.2.3--x",
        "1.2.3_",
        "1.2.3-rc_",
        "1.2.3_a-b_c",
        "1.2.3-x_b1-y",
        "2.0.0.BUILD",
        "2.0.0.M",
        "1.0.dev4",
        "99999999999999999999",
        "lts-alpine",
        "main-20240115-abc1234",
    ] {
        assert_eq!(parse(not_a_version), None, "{not_a_version}");
    }
}

/// One push after `before`: (report, bump, latest), per policy.
#[test]
fn bumps_by_the_rules() {
    use Bump::*;
    let all = policy(None, true, false);
    let releases = policy(None, false, true);
    // policy, known before, pushed, then (report, bump, latest)
    type Row<'a> = (
        &'a VersionPolicy,
        &'a [&'a str],
        &'a str,
        bool,
        Option<Bump>,
        bool,
    );
    let table: &[Row] = &[
        (
            &all,
            &["v1.2.3", "v1.0.0", "latest"],
            "v2.0.0",
            true,
            Some(Major),
            true,
        ),
        (&all, &["v1.2.3"], "v1.3.0", true, Some(Minor), true),
        (&all, &["v1.2.3"], "v1.2.4", true, Some(Patch), true),
        (&all, &["v1.2.3"], "v1.1.0", true, Some(Older), false),
        (
            &all,
            &["v1.2.3"],
            "v1.3.0-rc.1",
            true,
            Some(Prerelease),
            true,
        ),
        (&all, &["v1.2.3"], "v9-alpine", true, Some(First), true),
        (&all, &[], "1.0.0", true, Some(First), true),
        // A GA after its release candidate is measured against the releases: major.
        (&all, &["1.9.0"], "2.0.0-rc.1", true, Some(Prerelease), true),
        (
            &all,
            &["1.9.0", "2.0.0-rc.1"],
            "2.0.0",
            true,
            Some(Major),
            true,
        ),
        (
            &all,
            &["1.9.0", "2.0.0-rc.2"],
            "2.0.0-rc.1",
            true,
            Some(Older),
            false,
        ),
        // The same version again, under another name or with a higher rebuild counter.
        (&all, &["1.2.3"], "v1.2.3", true, Some(Rebuild), true),
        (
            &all,
            &["1.25.3-debian-12-r5"],
            "1.25.3-debian-12-r6",
            true,
            Some(Rebuild),
            true,
        ),
        (
            &all,
            &["1.25.3-debian-12-r5"],
            "1.25.4-debian-12-r0",
            true,
            Some(Patch),
            true,
        ),
        (&all, &["8.9-1107"], "8.9-1108", true, Some(Rebuild), true),
        (
            &all,
            &["8.9-1107", "8.10-1"],
            "8.9-1108",
            true,
            Some(Older),
            false,
        ),
        (&all, &["1.2.3"], "1.2.3+rebuild", true, Some(Rebuild), true),
        // A rebuild counter on fewer numbers is still the same version, not an alias of it.
        (&all, &["2.0.0"], "2.0-1", true, Some(Rebuild), true),
        // An alias that lands first is not "known before" the version it names.
        (&all, &["2.0.5", "2.1"], "2.1.0", true, Some(Minor), true),
        (&releases, &["2.1"], "2.1.0", true, Some(First), true),
        // A floating alias arriving after what it names.
        (&all, &["1.2.5"], "1.2", true, Some(Floating), true),
        (&releases, &["2.0.0", "1.2.5"], "1", false, None, false),
        // Variants compare case-insensitively.
        (
            &releases,
            &["1.2.3-alpine"],
            "1.2.4-Alpine",
            true,
            Some(Patch),
            true,
        ),
        (
            &releases,
            &["1.2.3-Alpine"],
            "1.2.2-alpine",
            false,
            None,
            false,
        ),
        // Temurin flavours are variants, each its own line.
        (
            &releases,
            &["21.0.2_13-jdk-jammy"],
            "21.0.2_13-jre-jammy",
            true,
            Some(First),
            true,
        ),
        // Spring milestones and `next` are pre-releases.
        (&releases, &["6.1.0"], "6.2.0-M1", false, None, false),
        (&all, &["6.1.0"], "6.2.0-M1", true, Some(Prerelease), true),
        (
            &all,
            &["6.2.0-M1"],
            "6.2.0-RC1",
            true,
            Some(Prerelease),
            true,
        ),
        (&releases, &["1.0.0"], "1.0.1-next.1", false, None, false),
    ];
    for (i, (p, before, tag, report, bump, latest)) in table.iter().enumerate() {
        let v = judge(p, before, tag);
        assert_eq!(
            (v.report, v.bump, v.latest),
            (*report, *bump, *latest),
            "row {i}: {tag} after {before:?}"
        );
    }
}

#[test]
fn moved_tags_are_rebuilds_or_floating() {
    let p = policy(None, false, true);
    let tags = [
        ("v1.0.1", "a"),
        ("v1.2.2", "b"),
        ("v1.2.3", "c"),
        ("1.2.3", "c"),
        ("1.2", "c"),
    ];
    let after = tags.iter().map(|(t, d)| (*t, Some(*d)));
    let judged: Vec<_> = tags.iter().map(|(t, d)| (*t, Some(*d))).collect();
    let index = VersionIndex::new(&p, tags.iter().map(|(t, _)| *t), after, &judged);
    let newest = index.judge("v1.2.3", Some("c"), false);
    assert_eq!((newest.bump, newest.latest), (Some(Bump::Rebuild), true));
    let old = index.judge("v1.0.1", Some("a"), false);
    assert_eq!(
        (old.report, old.bump, old.latest),
        (true, Some(Bump::Rebuild), false)
    );
    let floating = index.judge("1.2", Some("c"), false);
    assert_eq!(
        (
            floating.bump,
            floating.latest,
            floating.points_to.as_deref()
        ),
        (Some(Bump::Floating), true, Some("1.2.3"))
    );
    let moved = index.judge("latest", Some("c"), false);
    assert_eq!((moved.report, moved.version), (true, None));
    assert!(
        !index.judge("edge", None, true).report,
        "a new non-version tag is not newer"
    );
}

#[test]
fn range_limits_reports_and_what_counts_as_known() {
    let p = policy(Some(">=1.2, <2"), false, true);
    assert!(!judge(&p, &["1.2.0"], "2.0.0").report, "above the range");
    assert!(!judge(&p, &["1.2.0"], "1.1.0").report, "below the range");
    let v = judge(&p, &["1.2.0", "2.5.0"], "1.3.0");
    assert_eq!(
        (v.report, v.bump, v.latest),
        (true, Some(Bump::Minor), true)
    );
    assert!(judge(&p, &["1.2.0"], "1.5").report, "padded for the range");
    assert!(
        !judge(&p, &[], "latest").report,
        "not a version, so not in range"
    );
    assert!(
        !judge(&p, &[], "1.5.0-rc.1").report,
        "pre-releases stay off by default"
    );
    let with_pre = policy(Some(">=1.2, <2"), true, false);
    assert!(judge(&with_pre, &[], "1.5.0-rc.1").report);
    assert!(
        judge(&with_pre, &[], "1.2.0-rc.1").report,
        "release part 1.2.0"
    );
    assert!(
        !judge(&with_pre, &[], "2.0.0-rc.1").report,
        "<2 keeps 2.0 out"
    );
    let named = policy(Some(">=2.0.0-rc.2"), true, false);
    assert!(judge(&named, &[], "2.0.0-rc.3").report);
    assert!(
        !judge(&named, &[], "2.0.0-rc.1").report,
        "a range naming a pre-release follows semver"
    );
}

#[test]
fn latest_is_per_variant_in_the_new_snapshot() {
    let p = policy(None, false, false);
    let before = ["1.0.0"];
    let after = ["1.0.0", "1.2.0", "1.1.5", "1.2", "1.3.0-alpine"];
    let judged: Vec<_> = after.iter().map(|t| (*t, None)).collect();
    let index = VersionIndex::new(
        &p,
        before.into_iter(),
        after.iter().map(|t| (*t, None)),
        &judged,
    );
    let v115 = index.judge("1.1.5", None, true);
    assert_eq!(
        (v115.report, v115.bump, v115.latest),
        (true, Some(Bump::Minor), false)
    );
    assert!(index.judge("1.2.0", None, true).latest);
    assert!(
        index.judge("1.2", None, true).latest,
        "a floating alias of the highest"
    );
    assert!(
        index.judge("1.3.0-alpine", None, true).latest,
        "its own variant"
    );
    assert_eq!(
        index.judge("1.3.0-alpine", None, true).version,
        Some(("1.3.0".into(), "alpine".into()))
    );
}

#[test]
fn bump_names_are_the_event_values() {
    use Bump::*;
    let all = [
        Major, Minor, Patch, Prerelease, Rebuild, Floating, Older, First,
    ];
    assert_eq!(
        all.map(Bump::as_str),
        [
            "major",
            "minor",
            "patch",
            "prerelease",
            "rebuild",
            "floating",
            "older",
            "first"
        ]
    );
}

/// Tags are at most 128 characters of `[A-Za-z0-9_.-]` (OCI distribution spec), but a registry
/// may list anything: no tag may panic, numbers beyond u64 are no versions, and a normalised
/// version reads back as itself.
#[test]
fn hostile_tags_never_panic() {
    let mut tags: Vec<String> = [
        "99999999999999999999.0.0",
        "1.99999999999999999999.0",
        "1.0.0-rc.99999999999999999999",
        "1.0.0-r99999999999999999999",
        "18446744073709551616",
        "é1.2.3",
        "1.2.3-é",
        "１.２.３",
        "1.0.0-RC٣",
        "v1.2.3_é",
        "1.0.0-rc..1",
        "1.0.0-.",
        "1.0.0-m",
        "1.0.0-m.x",
        "1rcé",
        "0001.0002.0003-rc.0004",
    ]
    .map(String::from)
    .to_vec();
    tags.push("9".repeat(128));
    tags.push(format!("1.0.0-{}", "a".repeat(122)));
    tags.push(format!("1.0.0-rc.{}", "0".repeat(119)));
    tags.push(format!("v{}", "1.".repeat(63)));
    // Deterministic noise shaped like versions: a prefix, numbers of any length (leading zeros,
    // beyond u64), then suffix pieces and separators.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let pieces = [
        "rc",
        "RC",
        "beta",
        "a",
        "b",
        "M",
        "m1",
        "dev",
        "ea",
        "next",
        "alpine",
        "slim",
        "r",
        "r5",
        "x",
        "é",
        "0",
        "00",
        "7",
        "42",
        "18446744073709551615",
        "99999999999999999999",
    ];
    let seps = [".", "-", "_", "+", ""];
    for _ in 0..20_000 {
        let mut t = String::from(["", "v", "V"][next(3)]);
        for i in 0..1 + next(4) {
            if i > 0 {
                t.push('.');
            }
            let digits = 1 + next(22);
            t.extend((0..digits).map(|_| char::from(b'0' + next(10) as u8)));
        }
        for _ in 0..next(5) {
            t.push_str(seps[next(seps.len())]);
            t.push_str(pieces[next(pieces.len())]);
        }
        tags.push(t);
    }
    for p in [
        policy(None, true, true),
        policy(Some(">=1, <2"), false, false),
    ] {
        let after = tags.iter().map(|t| (t.as_str(), Some(t.as_str())));
        let judged: Vec<_> = tags
            .iter()
            .map(|t| (t.as_str(), Some(t.as_str())))
            .collect();
        let index = VersionIndex::new(&p, tags.iter().map(String::as_str), after, &judged);
        for tag in &tags {
            let verdict = index.judge(tag, Some(tag), true);
            index.judge(tag, Some(tag), false);
            // The earlier rules read stored tags once, when their snapshot is upgraded.
            p.admitted_before_rules_1(tag);
            if let Some((v, _)) = verdict.version {
                let again = parse(&v).map(|t| t.to_string());
                assert_eq!(again.as_deref(), Some(v.as_str()), "{tag}");
            }
        }
    }
    assert_eq!(
        norm("0001.0002.0003-rc.0004"),
        Some(("1.2.3-rc.4".into(), String::new()))
    );
}
