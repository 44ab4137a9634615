//! Metadata-only responses (`PartialObjectMetadata`), as kube-apiserver serves them to a client
//! that asks with `Accept: application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1` (or
//! `as=PartialObjectMetadataList` for a list): every object reduced to its `metadata`, under
//! the kind `PartialObjectMetadata` of `meta.k8s.io/v1`. Lists and watches of every resource
//! honour it (kube-rs's `Api<PartialObjectMeta<K>>` and metadata watcher send it).

use axum::http::{header, HeaderMap};
use serde_json::{json, Value};

/// The API version of metadata-only objects and lists.
pub(crate) const API_VERSION: &str = "meta.k8s.io/v1";
/// The kind of one metadata-only object.
pub(crate) const KIND: &str = "PartialObjectMetadata";
/// The kind of a metadata-only list.
pub(crate) const LIST_KIND: &str = "PartialObjectMetadataList";

/// Whether the request asks for metadata only (any `Accept` media type with
/// `as=PartialObjectMetadata` or `as=PartialObjectMetadataList`).
pub(crate) fn wanted(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            media.split(';').skip(1).any(|p| {
                let p = p.trim();
                p == "as=PartialObjectMetadata" || p == "as=PartialObjectMetadataList"
            })
        })
}

/// `object` reduced to its metadata.
pub(crate) fn partial(object: &Value) -> Value {
    json!({
        "kind": KIND,
        "apiVersion": API_VERSION,
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn only_the_partial_media_types_ask_for_metadata() {
        let mut h = HeaderMap::new();
        assert!(!wanted(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!wanted(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static(
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
            ),
        );
        assert!(wanted(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static(
                "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1, application/json",
            ),
        );
        assert!(wanted(&h));
    }

    #[test]
    fn partial_keeps_only_the_metadata() {
        let node = json!({"kind": "Node", "apiVersion": "v1", "metadata": {"name": "n1",
            "annotations": {"a": "b"}}, "spec": {"podCIDRs": ["10.0.0.0/24"]}, "status": {}});
        assert_eq!(
            partial(&node),
            json!({"kind": KIND, "apiVersion": API_VERSION,
                   "metadata": {"name": "n1", "annotations": {"a": "b"}}})
        );
    }
}
