//! `mature_after` end to end: a real `docker-registry` behind a logging (and, when asked,
//! failing) proxy, and `regwatch run` with the stdout sink polling every second. `tag.matured`
//! comes once, `mature_after` after the tag's detection; never for a digest the tag left; across
//! restarts neither lost nor repeated; and a failing cycle only delays it.

mod support;

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use support::proxy::{self, Fault};
use support::{Auth, Daemon, Registry, Setup, assert_schema_valid, json_lines, report};

const ADDED: &str = "io.regwatch.tag.added";
const UPDATED: &str = "io.regwatch.tag.updated";
const MATURED: &str = "io.regwatch.tag.matured";
const MATURE_AFTER: Duration = Duration::from_secs(5);
const INTERVAL: Duration = Duration::from_secs(1);
/// Process start-up, the scan itself and the test's polling.
const SLACK: Duration = Duration::from_millis(2500);
const WITHIN: Duration = Duration::from_secs(20);

async fn setup(registry: &Registry) -> (Setup, std::sync::Arc<proxy::ProxyState>) {
    let (wire, host) = proxy::start(&registry.url()).await;
    let setup = Setup::new(
        "interval = \"1s\"\njitter = \"0%\"\n",
        &format!(
            "[[registry]]\nname = \"local\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nrepositories = [\"team/app\"]\nmutable_tags = [\"latest\"]\nmature_after = \"5s\"\nrate_limit = 500\n"
        ),
    );
    (setup, wire)
}

async fn started(setup: &Setup) -> Daemon {
    let daemon = setup.spawn();
    support::wait_ready(&setup.admin).await;
    daemon
}

fn detected(e: &Value) -> SystemTime {
    humantime::parse_rfc3339(e["data"]["detected_at"].as_str().unwrap()).unwrap()
}

/// From `from`'s detection to `to`'s.
fn between(from: &Value, to: &Value) -> Duration {
    detected(to)
        .duration_since(detected(from))
        .unwrap_or_else(|_| panic!("{to} detected before {from}"))
}

fn matured<'a>(events: &'a [Value], tag: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"] == MATURED && e["data"]["tag"] == tag)
        .collect()
}

fn assert_ids_unique(events: &[Value]) {
    let ids: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "duplicate ids: {events:#?}");
}

/// Fails unless `took` lies in `mature_after ..= mature_after + 2 intervals + slack`.
fn assert_on_time(what: &str, took: Duration) {
    let latest = MATURE_AFTER + 2 * INTERVAL + SLACK;
    assert!(
        took >= MATURE_AFTER && took <= latest,
        "{what}: matured {took:?} after detection, outside {MATURE_AFTER:?}..={latest:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tag_matures_once_on_time_and_never_on_a_digest_it_left() {
    let registry = Registry::start(Auth::None);
    registry.push("team/app", "v0").await;
    let (setup, _wire) = setup(&registry).await;
    let daemon = started(&setup).await;

    let d1 = registry.push("team/app", "v1").await;
    let first = registry.push("team/app", "latest").await;
    daemon
        .wait_event("tag.added latest", WITHIN, |e| {
            e["type"] == ADDED && e["data"]["tag"] == "latest"
        })
        .await;
    // `latest` moves 2 s into its wait: its first digest must never mature.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = registry.push("team/app", "latest").await;
    daemon
        .wait_event("tag.matured latest", WITHIN, |e| {
            e["type"] == MATURED && e["data"]["tag"] == "latest"
        })
        .await;
    tokio::time::sleep(4 * INTERVAL).await;
    let (code, out, err) = daemon.stop();
    assert_eq!(code, 0, "{err}");
    let events = json_lines(&out);

    let added_v1 = events
        .iter()
        .find(|e| e["type"] == ADDED && e["data"]["tag"] == "v1")
        .expect("tag.added v1");
    let v1 = matured(&events, "v1");
    assert_eq!(v1.len(), 1, "exactly one tag.matured for v1: {events:#?}");
    assert_eq!(v1[0]["data"]["digest"], d1.as_str());
    let took = between(added_v1, v1[0]);
    assert_on_time("v1", took);

    let latest = matured(&events, "latest");
    assert_eq!(latest.len(), 1, "{events:#?}");
    assert_eq!(
        latest[0]["data"]["digest"],
        second.as_str(),
        "only the digest latest moved to matures"
    );
    assert!(
        !events
            .iter()
            .any(|e| e["type"] == MATURED && e["data"]["digest"] == first.as_str()),
        "{events:#?}"
    );
    let updated = events
        .iter()
        .find(|e| e["type"] == UPDATED && e["data"]["tag"] == "latest")
        .expect("tag.updated latest");
    assert_on_time("latest after its move", between(updated, latest[0]));
    assert_schema_valid(&events);
    assert_ids_unique(&events);
    report(
        "maturity: mature_after 5 s, interval 1 s: seconds from tag.added to tag.matured",
        format!("{:.3}", took.as_secs_f64()),
        "5 .. 9.5",
    );
    report(
        "maturity: tag moved 2 s after detection: tag.matured for its old digest",
        0,
        "0",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn maturity_survives_restarts_without_loss_or_repeat() {
    let registry = Registry::start(Auth::None);
    registry.push("team/app", "v0").await;
    let (setup, _wire) = setup(&registry).await;
    let daemon = started(&setup).await;
    let d1 = registry.push("team/app", "v1").await;
    let added = daemon
        .wait_event("tag.added v1", WITHIN, |e| e["data"]["tag"] == "v1")
        .await;
    let stop_at = detected(&added) + Duration::from_secs(2);
    if let Ok(wait) = stop_at.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    let (code, out, err) = daemon.stop();
    assert_eq!(code, 0, "{err}");
    let before = json_lines(&out);
    assert_eq!(
        before.len(),
        1,
        "only the tag.added before the restart: {before:#?}"
    );

    let daemon = started(&setup).await;
    daemon
        .wait_event("tag.matured v1 after the restart", WITHIN, |e| {
            e["type"] == MATURED
        })
        .await;
    tokio::time::sleep(4 * INTERVAL).await;
    let (code, out, err) = daemon.stop();
    assert_eq!(code, 0, "{err}");
    let after = json_lines(&out);
    assert_eq!(
        after.len(),
        1,
        "exactly one tag.matured and no repeated tag.added after the restart: {after:#?}"
    );
    assert_eq!(after[0]["type"], MATURED);
    assert_eq!(after[0]["data"]["digest"], d1.as_str());
    let took = between(&added, &after[0]);
    assert_on_time("v1 across a restart", took);

    // Once matured, a further restart reports nothing.
    let daemon = started(&setup).await;
    tokio::time::sleep(4 * INTERVAL).await;
    let (code, out, err) = daemon.stop();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out, "",
        "nothing again after a second restart; stderr: {err}"
    );

    let events: Vec<Value> = before.into_iter().chain(after).collect();
    assert_schema_valid(&events);
    assert_ids_unique(&events);
    report(
        "maturity: restart 2 s after detection: tag.matured events / seconds after detection",
        format!("1 / {:.3}", took.as_secs_f64()),
        "1 / 5 .. 9.5",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_registry_delays_maturity_and_never_doubles_it() {
    let registry = Registry::start(Auth::None);
    registry.push("team/app", "v0").await;
    let (setup, wire) = setup(&registry).await;
    let daemon = started(&setup).await;
    let d1 = registry.push("team/app", "v1").await;
    let added = daemon
        .wait_event("tag.added v1", WITHIN, |e| e["data"]["tag"] == "v1")
        .await;
    // Every request fails from 2 s after detection until 3 s past the deadline.
    let fail_from = detected(&added) + Duration::from_secs(2);
    if let Ok(wait) = fail_from.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    wire.set_chaos(1.0, vec![Fault::Error500]);
    let heal_at = detected(&added) + MATURE_AFTER + Duration::from_secs(3);
    if let Ok(wait) = heal_at.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    let healed = SystemTime::now();
    wire.set_chaos(0.0, Vec::new());
    daemon
        .wait_event("tag.matured v1", WITHIN, |e| e["type"] == MATURED)
        .await;
    tokio::time::sleep(4 * INTERVAL).await;
    let (code, out, err) = daemon.stop();
    assert_eq!(code, 0, "{err}");
    let events = json_lines(&out);
    let v1 = matured(&events, "v1");
    assert_eq!(v1.len(), 1, "{events:#?}");
    assert_eq!(v1[0]["data"]["digest"], d1.as_str());
    assert!(
        detected(v1[0]) >= healed,
        "no tag.matured while every cycle failed: {events:#?}"
    );
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_schema_valid(&events);
    assert_ids_unique(&events);
    assert!(wire.injected.load(std::sync::atomic::Ordering::Relaxed) > 0);
    report(
        "maturity: every request failing across the deadline: tag.matured events after healing",
        v1.len(),
        "1",
    );
}

/// `regwatch once` in a loop, the way a cron job runs it.
fn once_setup(registry: &Registry, mature_after: &str) -> Setup {
    Setup::new(
        "",
        &format!(
            "[[registry]]\nname = \"local\"\nkind = \"oci\"\nurl = \"{}\"\ninsecure = true\nrepositories = [\"team/app\"]\n{mature_after}",
            registry.url()
        ),
    )
}

fn once(setup: &Setup, args: &[&str]) -> Vec<Value> {
    let (code, out, err) = setup.regwatch(args);
    assert_eq!(code, 0, "{args:?}: {err}");
    json_lines(&out)
}

/// A detection whose commit is lost (here: a dry run, which detects and stores nothing) is
/// detected again against the same snapshot revision, so the `tag.matured` a consumer finally
/// gets has the same id each time: a redelivery, not a second event.
#[tokio::test(flavor = "multi_thread")]
async fn a_matured_event_detected_again_after_a_lost_commit_keeps_its_id() {
    let registry = Registry::start(Auth::None);
    registry.push("team/app", "v0").await;
    let setup = once_setup(&registry, "mature_after = \"5s\"\n");
    assert!(once(&setup, &["once"]).is_empty(), "baseline");
    let d1 = registry.push("team/app", "v1").await;
    let added = once(&setup, &["once"]);
    assert_eq!(added.len(), 1, "{added:#?}");
    tokio::time::sleep(MATURE_AFTER).await;

    let lost: Vec<Value> = (0..2)
        .flat_map(|_| once(&setup, &["once", "--dry-run"]))
        .collect();
    let delivered = once(&setup, &["once"]);
    assert_eq!(delivered.len(), 1, "{delivered:#?}");
    assert_eq!(delivered[0]["type"], MATURED);
    assert_eq!(delivered[0]["data"]["digest"], d1.as_str());
    assert_eq!(lost.len(), 2, "{lost:#?}");
    for e in &lost {
        assert_eq!(e["id"], delivered[0]["id"], "same detection, same id");
    }
    assert!(once(&setup, &["once"]).is_empty(), "matured once only");
    let events: Vec<Value> = added.into_iter().chain(delivered).collect();
    assert_schema_valid(&events);
    assert_ids_unique(&events);
}

/// Turning `mature_after` off forgets the pending deadlines: turned on again, only tags reported
/// from then on mature.
#[tokio::test(flavor = "multi_thread")]
async fn turning_mature_after_off_forgets_pending_deadlines() {
    let registry = Registry::start(Auth::None);
    registry.push("team/app", "v0").await;
    let on = "mature_after = \"5s\"\n";
    let setup = once_setup(&registry, on);
    assert!(once(&setup, &["once"]).is_empty(), "baseline");
    registry.push("team/app", "v1").await;
    assert_eq!(once(&setup, &["once"]).len(), 1);
    let text = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(&setup.config, text.replace(on, "")).unwrap();
    assert!(once(&setup, &["once"]).is_empty(), "off");
    tokio::time::sleep(MATURE_AFTER).await;
    assert!(once(&setup, &["once"]).is_empty(), "off, past the deadline");
    std::fs::write(&setup.config, &text).unwrap();
    assert!(
        once(&setup, &["once"]).is_empty(),
        "on again: v1's deadline was forgotten"
    );
    let d2 = registry.push("team/app", "v2").await;
    assert_eq!(once(&setup, &["once"]).len(), 1);
    tokio::time::sleep(MATURE_AFTER).await;
    let events = once(&setup, &["once"]);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["type"], MATURED);
    assert_eq!(events[0]["data"]["tag"], "v2");
    assert_eq!(events[0]["data"]["digest"], d2.as_str());
}
