//! State store faults: an unusable state directory, a full disk (a small tmpfs), and a corrupted
//! file each give a clear error and never lose or corrupt state.

mod support;

use std::process::Command;

use support::{Auth, Registry, Setup, json_lines, report};

fn registry_block(registry: &Registry) -> String {
    format!(
        "[[registry]]\nname = \"local\"\nkind = \"oci\"\nurl = \"{}\"\ninsecure = true\nrepositories = [\"team/*\"]\n",
        registry.url()
    )
}

fn with_state_dir(setup: &Setup, dir: &std::path::Path) {
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let old = setup.dir.path().join("state");
    std::fs::write(
        &setup.config,
        text.replace(&old.display().to_string(), &dir.display().to_string()),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn unusable_state_dir_is_a_clear_error() {
    let registry = Registry::start(Auth::None);
    let setup = Setup::new("", &registry_block(&registry));
    let file = setup.dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    with_state_dir(&setup, &file.join("state"));
    let (code, _, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot open state store") && err.contains("cannot create state_dir"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_store_is_reported_with_the_way_to_rebuild() {
    let registry = Registry::start(Auth::None);
    registry.push("team/app", "v1").await;
    let setup = Setup::new("", &registry_block(&registry));
    let (code, _, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 0, "{err}");
    let file = setup.dir.path().join("state").join("regwatch.redb");
    let mut bytes = std::fs::read(&file).unwrap();
    // Scribble over the header and the first pages.
    for b in bytes.iter_mut().take(8192) {
        *b ^= 0x5a;
    }
    std::fs::write(&file, bytes).unwrap();
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(out, "", "no events from a broken store");
    assert!(
        err.contains("regwatch.redb") && err.contains("corrupted"),
        "{err}"
    );
    assert!(err.contains("move the file aside to rebuild it"), "{err}");
    let message = err.lines().last().unwrap_or_default().to_owned();
    report(
        "corrupted store: message",
        message.chars().take(90).collect::<String>(),
        "names the file",
    );
}

/// A tmpfs of `size` mounted at `path`, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (the CI and test script run as root)"
        );
        Tmpfs(path.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn full_disk_fails_clearly_and_loses_nothing() {
    let registry = Registry::start(Auth::None);
    registry.push("team/app", "v1").await;
    let setup = Setup::new("", &registry_block(&registry));
    let mnt = setup.dir.path().join("small");
    let _tmpfs = Tmpfs::mount(&mnt, "4m");
    with_state_dir(&setup, &mnt.join("state"));
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");

    // Fill the disk, then make a change that needs recording.
    let filler = mnt.join("filler");
    let fill = Command::new("dd")
        .args([
            "if=/dev/zero",
            "bs=64k",
            &format!("of={}", filler.display()),
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&fill.stderr).contains("No space left"));
    // Enough change that the commit must grow the file past what redb already allocated.
    let mut digests = std::collections::HashMap::new();
    for i in 0..200 {
        let tag = format!("v2.{i}");
        digests.insert(tag.clone(), registry.push("team/app", &tag).await);
    }
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 1, "a full disk must fail the run: {err}");
    assert_eq!(out, "", "nothing may be published that was not recorded");
    let line = err
        .lines()
        .find(|l| l.contains("state store"))
        .unwrap_or_else(|| panic!("no state store error in:\n{err}"))
        .to_owned();
    assert!(
        line.contains("No space left") || line.contains("os error 28"),
        "{line}"
    );

    // Space again: the change is reported, exactly once, and the store is intact.
    std::fs::remove_file(&filler).unwrap();
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 0, "{err}");
    let events = json_lines(&out);
    assert_eq!(events.len(), digests.len(), "every change, once");
    let lost = digests
        .iter()
        .filter(|(tag, digest)| {
            !events
                .iter()
                .any(|e| e["data"]["tag"] == tag.as_str() && e["data"]["digest"] == digest.as_str())
        })
        .count();
    assert_eq!(lost, 0);
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    report(
        "disk full: run fails with",
        line.split("state store")
            .nth(1)
            .unwrap_or("")
            .chars()
            .take(60)
            .collect::<String>(),
        "a clear error",
    );
    report("disk full: events lost after space returns", lost, "0");
}

/// A state file whose schema is newer than this binary knows (a rollback after an upgrade) is
/// refused at open, naming both versions and what to do, with exit 1: not read half-way, not
/// overwritten, and no panic.
#[tokio::test(flavor = "multi_thread")]
async fn a_state_file_of_a_newer_schema_is_refused_with_both_versions() {
    let registry = Registry::start(Auth::None);
    registry.push("team/app", "v1").await;
    let setup = Setup::new("", &registry_block(&registry));
    let dir = setup.dir.path().join("state");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("regwatch.redb");
    let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
    {
        let db = redb::Database::create(&file).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(meta).unwrap().insert("schema", 99).unwrap();
        tx.commit().unwrap();
    }
    for args in [&["once"][..], &["once", "--dry-run"][..]] {
        let (code, out, err) = setup.regwatch(args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert_eq!(out, "", "{args:?}: nothing scanned");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            err.contains("schema 99") && err.contains("schema 3") && err.contains("newer"),
            "{args:?}: names both versions: {err}"
        );
        assert!(err.contains("move the file aside"), "{args:?}: {err}");
        let message = err.lines().last().unwrap_or_default().to_owned();
        report(
            "state file of a newer schema: message",
            message.chars().take(100).collect::<String>(),
            "names both schemas and what to do",
        );
    }
    let db = redb::Database::create(&file).unwrap();
    let tx = redb::ReadableDatabase::begin_read(&db).unwrap();
    let schema = tx.open_table(meta).unwrap().get("schema").unwrap().unwrap();
    assert_eq!(schema.value(), 99, "left as it was");
}
