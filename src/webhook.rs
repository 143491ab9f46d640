//! Webhook bodies: which repositories a push notification names. A webhook is only a hint; the
//! repositories it names are scanned through the normal path, and nothing is emitted from the body.

use serde_json::Value;

use crate::registry::valid_repository;

/// The repositories pushed to, from any supported body: distribution notifications, Docker Hub,
/// Harbor, ACR, and ECR "ECR Image Action" from EventBridge. `Ok(empty)` means a recognised body
/// with no push in it (e.g. a distribution pull event).
pub fn pushed_repositories(body: &[u8]) -> Result<Vec<String>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let str_at = |v: &Value, path: &[&str]| -> Option<String> {
        path.iter()
            .try_fold(v, |v, k| v.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let mut repos: Vec<String> = if let Some(events) = v.get("events").and_then(Value::as_array) {
        // CNCF distribution notifications.
        events
            .iter()
            .filter(|e| e.get("action").and_then(Value::as_str) == Some("push"))
            .filter_map(|e| str_at(e, &["target", "repository"]))
            .collect()
    } else if let Some(name) = str_at(&v, &["repository", "repo_name"]) {
        // Docker Hub.
        vec![name]
    } else if v.get("type").and_then(Value::as_str) == Some("PUSH_ARTIFACT") {
        // Harbor.
        str_at(&v, &["event_data", "repository", "repo_full_name"])
            .into_iter()
            .collect()
    } else if v.get("detail-type").and_then(Value::as_str) == Some("ECR Image Action") {
        // ECR via EventBridge.
        let push = str_at(&v, &["detail", "action-type"]).as_deref() == Some("PUSH");
        str_at(&v, &["detail", "repository-name"])
            .filter(|_| push)
            .into_iter()
            .collect()
    } else if v.get("action").and_then(Value::as_str).is_some() && v.get("target").is_some() {
        // ACR.
        let push = v.get("action").and_then(Value::as_str) == Some("push");
        str_at(&v, &["target", "repository"])
            .filter(|_| push)
            .into_iter()
            .collect()
    } else {
        return Err("unrecognised webhook body".into());
    };
    if let Some(bad) = repos.iter().find(|r| !valid_repository(r)) {
        return Err(format!("webhook names an invalid repository {bad:?}"));
    }
    repos.sort_unstable();
    repos.dedup();
    Ok(repos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_push_and_pull() {
        let body = br#"{"events":[
            {"action":"push","target":{"repository":"team/app","tag":"v1","digest":"sha256:x"}},
            {"action":"pull","target":{"repository":"team/other"}},
            {"action":"push","target":{"repository":"team/app","tag":"v2"}}]}"#;
        assert_eq!(pushed_repositories(body).unwrap(), vec!["team/app"]);
        assert_eq!(
            pushed_repositories(br#"{"events":[]}"#).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn each_vendor_shape() {
        let hub = br#"{"push_data":{"tag":"latest"},"repository":{"repo_name":"acme/web"}}"#;
        assert_eq!(pushed_repositories(hub).unwrap(), vec!["acme/web"]);
        let harbor = br#"{"type":"PUSH_ARTIFACT","event_data":{"repository":{"repo_full_name":"proj/app"}}}"#;
        assert_eq!(pushed_repositories(harbor).unwrap(), vec!["proj/app"]);
        let acr = br#"{"action":"push","target":{"repository":"svc/api","tag":"v1"}}"#;
        assert_eq!(pushed_repositories(acr).unwrap(), vec!["svc/api"]);
        let acr_delete = br#"{"action":"delete","target":{"repository":"svc/api"}}"#;
        assert!(pushed_repositories(acr_delete).unwrap().is_empty());
        let ecr = br#"{"detail-type":"ECR Image Action","detail":{"action-type":"PUSH","result":"SUCCESS","repository-name":"team/ecr-app","image-tag":"v1"}}"#;
        assert_eq!(pushed_repositories(ecr).unwrap(), vec!["team/ecr-app"]);
    }

    #[test]
    fn garbage_is_refused() {
        assert!(pushed_repositories(b"not json").is_err());
        assert!(pushed_repositories(br#"{"hello":"world"}"#).is_err());
        assert!(pushed_repositories(br#"{"repository":{"repo_name":"../../etc"}}"#).is_err());
        assert!(pushed_repositories(b"\xff\xfe").is_err());
    }
}
