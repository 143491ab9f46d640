//! ACR's "Tag - Get List" (learn.microsoft.com/rest/api/containerregistry/tag/get-list):
//! `GET {url}/acr/v1/{name}/_tags?last={last}&n={n}`, answering a `TagList`:
//! `{"registry", "imageName", "tags": [{"name", "digest", "createdTime", "lastUpdateTime", ...}]}`,
//! paged like the Distribution API (`n`, `last`: "values lexically after last", and `Link`).
//! It takes the registry's own bearer tokens, for the scope `repository:<name>:metadata_read`
//! (what Azure's SDKs ask for these metadata APIs); the challenge and token dance is the
//! Distribution client's, so this module only builds the URL and reads the page.

use serde::Deserialize;

use super::super::oci::OciRegistry;
use super::super::{RegistryError, Tag, valid_digest, valid_tag};
use super::parse_time;

#[derive(Deserialize)]
struct TagList {
    #[serde(default)]
    tags: Option<Vec<TagAttributes>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TagAttributes {
    name: String,
    digest: String,
    created_time: Option<String>,
    last_update_time: Option<String>,
}

/// Every tag of `repo` with its digest and the time the tag last moved.
pub async fn list(oci: &OciRegistry, repo: &str) -> Result<Vec<Tag>, RegistryError> {
    let mut url = oci.endpoint(&format!("/acr/v1/{repo}/_tags"));
    url.query_pairs_mut()
        .append_pair("n", &oci.page_size().to_string());
    let scope = format!("repository:{repo}:metadata_read");
    let mut details = Vec::new();
    let names = oci.paginate(url, &scope, tags_of, &mut details).await?;
    let mut by_name: std::collections::HashMap<String, Tag> = std::collections::HashMap::new();
    for t in details {
        match by_name.entry(t.name.clone()) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(t);
            }
            // Listed twice with two digests: neither is believed (the digest lookup decides).
            std::collections::hash_map::Entry::Occupied(mut o) if o.get().digest != t.digest => {
                o.get_mut().digest = None;
                o.get_mut().pushed_at = None;
            }
            std::collections::hash_map::Entry::Occupied(_) => {}
        }
    }
    names
        .into_iter()
        .map(|name| {
            by_name
                .remove(&name)
                .ok_or_else(|| RegistryError::Protocol(format!("{repo}: _tags lost tag {name:?}")))
        })
        .collect()
}

/// One `_tags` page: its names, and each tag with its digest and push time in `details`. A tag
/// without a valid name makes the page malformed.
fn tags_of(body: &[u8], details: &mut Vec<Tag>) -> Result<Vec<String>, serde_json::Error> {
    use serde::de::Error;
    let page: TagList = serde_json::from_slice(body)?;
    let mut names = Vec::new();
    for t in page.tags.unwrap_or_default() {
        if !valid_tag(&t.name) {
            return Err(serde_json::Error::custom(format!(
                "invalid tag name {:?}",
                t.name
            )));
        }
        // lastUpdateTime moves when the tag is pushed again; createdTime is its first push.
        let pushed_at = t
            .last_update_time
            .or(t.created_time)
            .as_deref()
            .and_then(parse_time);
        names.push(t.name.clone());
        // A malformed digest is confined to its tag: the digest lookup decides where it matters.
        let digest = valid_digest(&t.digest).then_some(t.digest);
        details.push(Tag {
            name: t.name,
            digest,
            pushed_at,
        });
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_documented_sample() {
        // The sample response of "Tag - Get List".
        let body = br#"{"registry":"acrapi.azurecr-test.io","imageName":"nanoserver","tags":[{"name":"4.7.2-20180905-nanoserver-1803","digest":"sha256:110d2b6c84592561338aa040b1b14b7ab81c2f9edbd564c2285dd7d70d777086","createdTime":"2018-09-06T06:17:21.0856539Z","lastUpdateTime":"2018-09-06T06:17:21.0856539Z","signed":false,"changeableAttributes":{"deleteEnabled":true,"writeEnabled":true,"readEnabled":true,"listEnabled":true}}]}"#;
        let mut details = Vec::new();
        let names = tags_of(body, &mut details).unwrap();
        assert_eq!(names, vec!["4.7.2-20180905-nanoserver-1803"]);
        assert!(
            details[0]
                .digest
                .as_deref()
                .unwrap()
                .starts_with("sha256:110d")
        );
        assert!(details[0].pushed_at.is_some());
        // A malformed digest is confined to its tag: listed without one, the page still read.
        let mut details = Vec::new();
        let names = tags_of(
            br#"{"tags":[{"name":"v1","digest":"md5:x"}]}"#,
            &mut details,
        )
        .unwrap();
        assert_eq!((names.len(), details[0].digest.as_deref()), (1, None));
        assert!(tags_of(br#"{"tags":[{"name":"v1"}]}"#, &mut Vec::new()).is_err());
        assert!(
            tags_of(br#"{"registry":"r","imageName":"i"}"#, &mut Vec::new())
                .unwrap()
                .is_empty()
        );
    }
}
