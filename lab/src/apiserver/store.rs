//! The API server's storage: objects, the global resourceVersion, the watch history window,
//! and the semantics of every verb (what etcd plus the apiserver's registry layer do).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

use super::patch;

/// The resources this server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// `v1` `Node` (cluster-scoped).
    Nodes,
    /// `v1` `ConfigMap`.
    ConfigMaps,
    /// `v1` `Event` (core group).
    CoreEvents,
    /// `events.k8s.io/v1` `Event`.
    Events,
    /// `discovery.k8s.io/v1` `EndpointSlice`.
    EndpointSlices,
    /// `v1` `Namespace` (cluster-scoped).
    Namespaces,
    /// `v1` `Pod`.
    Pods,
    /// `networking.k8s.io/v1` `NetworkPolicy`.
    NetworkPolicies,
}

impl Resource {
    /// The `kind` of one object.
    pub fn kind(self) -> &'static str {
        match self {
            Resource::Nodes => "Node",
            Resource::ConfigMaps => "ConfigMap",
            Resource::CoreEvents | Resource::Events => "Event",
            Resource::EndpointSlices => "EndpointSlice",
            Resource::Namespaces => "Namespace",
            Resource::Pods => "Pod",
            Resource::NetworkPolicies => "NetworkPolicy",
        }
    }

    /// The `apiVersion` of the resource.
    pub fn api_version(self) -> &'static str {
        match self {
            Resource::Events => "events.k8s.io/v1",
            Resource::EndpointSlices => "discovery.k8s.io/v1",
            Resource::NetworkPolicies => "networking.k8s.io/v1",
            _ => "v1",
        }
    }

    /// The plural resource name used in URLs and Status details.
    pub fn plural(self) -> &'static str {
        match self {
            Resource::Nodes => "nodes",
            Resource::ConfigMaps => "configmaps",
            Resource::CoreEvents | Resource::Events => "events",
            Resource::EndpointSlices => "endpointslices",
            Resource::Namespaces => "namespaces",
            Resource::Pods => "pods",
            Resource::NetworkPolicies => "networkpolicies",
        }
    }

    /// The group for Status details (`""` for core).
    fn group(self) -> &'static str {
        match self {
            Resource::Events => "events.k8s.io",
            Resource::EndpointSlices => "discovery.k8s.io",
            Resource::NetworkPolicies => "networking.k8s.io",
            _ => "",
        }
    }
}

/// Identifies one object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Its resource.
    pub resource: Resource,
    /// Its namespace (`None` for cluster-scoped resources).
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
}

impl ObjectKey {
    /// A Node's key.
    pub fn node(name: &str) -> Self {
        Self {
            resource: Resource::Nodes,
            namespace: None,
            name: name.to_string(),
        }
    }

    /// A namespaced object's key.
    pub fn namespaced(resource: Resource, namespace: &str, name: &str) -> Self {
        Self {
            resource,
            namespace: Some(namespace.to_string()),
            name: name.to_string(),
        }
    }
}

/// A failed request, rendered as a `metav1.Status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `StatusReason`.
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
    /// `(name, group, kind)` for `details`.
    pub details: Option<(String, &'static str, &'static str)>,
}

impl ApiError {
    /// A failure with no details.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn about(mut self, key: &ObjectKey) -> Self {
        self.details = Some((
            key.name.clone(),
            key.resource.group(),
            key.resource.plural(),
        ));
        self
    }

    pub(crate) fn not_found(key: &ObjectKey) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} {:?} not found", qualified(key.resource), key.name),
        )
        .about(key)
    }

    fn conflict(key: &ObjectKey) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {:?}: the object has been modified; please apply your changes to the latest version and try again",
                qualified(key.resource),
                key.name
            ),
        )
        .about(key)
    }

    /// A `410 Gone` for a watch or list from a resourceVersion older than the history.
    pub fn expired(requested: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    fn invalid(key: &ObjectKey, message: String) -> Self {
        Self::new(
            422,
            "Invalid",
            format!(
                "{} {:?} is invalid: {message}",
                key.resource.kind(),
                key.name
            ),
        )
        .about(key)
    }

    /// The `metav1.Status` object.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some((name, group, kind)) = &self.details {
            status["details"] = json!({"name": name, "group": group, "kind": kind});
        }
        status
    }
}

fn qualified(resource: Resource) -> String {
    match resource.group() {
        "" => resource.plural().to_string(),
        group => format!("{}.{group}", resource.plural()),
    }
}

/// One entry of the watch history (what etcd's watch and the apiserver's watch cache hold).
#[derive(Clone, Debug)]
pub struct Change {
    /// The resourceVersion this change created.
    pub rv: u64,
    /// Which object.
    pub key: ObjectKey,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// The object after the change (for `DELETED`, the last state with the deletion's RV).
    pub object: Value,
}

/// How a mutation is being made (only API requests count as writes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A client request over HTTP.
    Api,
    /// The test harness, playing kubelet or a cloud controller.
    Harness,
}

/// A modification the harness wants applied right after the next API `GET` of an object.
pub type Interference = Box<dyn FnOnce(&mut Value) + Send>;

/// All state.
pub struct Store {
    rv: u64,
    objects: BTreeMap<ObjectKey, Value>,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    /// Watches may start from any resourceVersion ≥ this; older ones get `410 Gone`.
    oldest_watchable: u64,
    changes: broadcast::Sender<Arc<Change>>,
    write_requests: HashMap<ObjectKey, u64>,
    conflicts: u64,
    interference: HashMap<ObjectKey, VecDeque<Interference>>,
    uid: u64,
}

impl Store {
    /// An empty store keeping at most `history_limit` changes for watches to resume from.
    pub fn new(history_limit: usize) -> Self {
        Self {
            rv: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            oldest_watchable: 1,
            changes: broadcast::channel(4096).0,
            write_requests: HashMap::new(),
            conflicts: 0,
            interference: HashMap::new(),
            uid: 0,
        }
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Forgets the watch history, as an API server restart loses its watch cache: watches
    /// resuming from any resourceVersion older than the current one get `410 Gone`.
    pub fn forget_history(&mut self) {
        self.history.clear();
        self.oldest_watchable = self.rv;
    }

    /// Counts an API write request (any outcome) against `key`.
    pub fn count_write(&mut self, key: &ObjectKey) {
        *self.write_requests.entry(key.clone()).or_default() += 1;
    }

    /// API write requests (create, update, patch, delete; any outcome) made against `key`.
    pub fn write_requests(&self, key: &ObjectKey) -> u64 {
        self.write_requests.get(key).copied().unwrap_or(0)
    }

    /// Writes rejected with `409 Conflict` because of a stale resourceVersion.
    pub fn conflicts(&self) -> u64 {
        self.conflicts
    }

    /// Queues `f` to be applied (as a harness write) right after the next API `GET` of `key`.
    pub fn interfere_after_get(&mut self, key: ObjectKey, f: Interference) {
        self.interference.entry(key).or_default().push_back(f);
    }

    /// The object, if present.
    pub fn get(&self, key: &ObjectKey) -> Option<&Value> {
        self.objects.get(key)
    }

    /// An API `GET`: the object, then any interference queued for it.
    pub fn api_get(&mut self, key: &ObjectKey) -> Result<Value, ApiError> {
        let object = self
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(key))?;
        if let Some(f) = self.interference.get_mut(key).and_then(VecDeque::pop_front) {
            let mut next = object.clone();
            f(&mut next);
            self.commit(key, next, "MODIFIED");
        }
        Ok(object)
    }

    /// Every object of `resource` (in `namespace`, if given) passing `filter`, sorted by key.
    pub fn list<'a>(
        &'a self,
        resource: Resource,
        namespace: Option<&'a str>,
        filter: &'a dyn Fn(&ObjectKey, &Value) -> bool,
    ) -> impl Iterator<Item = (&'a ObjectKey, &'a Value)> + 'a {
        self.objects.iter().filter(move |(k, v)| {
            k.resource == resource
                && (namespace.is_none() || k.namespace.as_deref() == namespace)
                && filter(k, v)
        })
    }

    /// Subscribes to changes and returns the retained history after `from`, atomically: every
    /// change is either in the returned history or delivered by the receiver, never both.
    /// `Err` (`410 Gone`) when `from` is older than the history window.
    #[allow(clippy::type_complexity)]
    pub fn watch_from(
        &self,
        from: u64,
    ) -> Result<(Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>), ApiError> {
        if from < self.oldest_watchable {
            return Err(ApiError::expired(from, self.oldest_watchable));
        }
        let backlog = self
            .history
            .iter()
            .filter(|c| c.rv > from)
            .cloned()
            .collect();
        Ok((backlog, self.changes.subscribe()))
    }

    /// Subscribes to changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    /// Stores `object` under `key` with a new resourceVersion, records and broadcasts the
    /// change. Returns the stored object.
    fn commit(&mut self, key: &ObjectKey, mut object: Value, kind: &'static str) -> Value {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = Value::from(self.rv.to_string());
        if kind == "DELETED" {
            self.objects.remove(key);
        } else {
            self.objects.insert(key.clone(), object.clone());
        }
        let change = Arc::new(Change {
            rv: self.rv,
            key: key.clone(),
            kind,
            object: object.clone(),
        });
        self.history.push_back(change.clone());
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.oldest_watchable = dropped.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.changes.send(change);
        object
    }

    /// Creates an object (`POST`); `AlreadyExists` if present.
    pub fn create(&mut self, key: &ObjectKey, mut object: Value) -> Result<Value, ApiError> {
        if self.objects.contains_key(key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} {:?} already exists", qualified(key.resource), key.name),
            )
            .about(key));
        }
        normalise(key, &mut object)?;
        self.uid += 1;
        let meta = &mut object["metadata"];
        if let Value::Object(meta) = meta {
            meta.remove("resourceVersion");
            meta.insert(
                "uid".into(),
                Value::from(format!("00000000-0000-4000-8000-{:012x}", self.uid)),
            );
            meta.insert("creationTimestamp".into(), Value::from(now()));
        }
        validate(key, None, &object)?;
        Ok(self.commit(key, object, "ADDED"))
    }

    /// Replaces an object (`PUT`). A `metadata.resourceVersion` in `object` is a precondition.
    pub fn update(
        &mut self,
        key: &ObjectKey,
        mut object: Value,
        subresource: Option<&str>,
    ) -> Result<Value, ApiError> {
        let current = self
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(key))?;
        normalise(key, &mut object)?;
        let rv = object["metadata"]["resourceVersion"].clone();
        if !rv.is_null() && rv != current["metadata"]["resourceVersion"] {
            self.conflicts += 1;
            return Err(ApiError::conflict(key));
        }
        self.finish_write(key, current, object, subresource)
    }

    /// Patches an object. `content_type` selects the format; a `metadata.resourceVersion` left
    /// in the patched object that differs from the current one is a conflict (the optimistic
    /// concurrency of a patch that carries a resourceVersion).
    pub fn patch(
        &mut self,
        key: &ObjectKey,
        content_type: &str,
        body: &[u8],
        subresource: Option<&str>,
    ) -> Result<Value, ApiError> {
        let current = self
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(key))?;
        let patch: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::new(400, "BadRequest", format!("error decoding patch: {e}")))?;
        let mut object = current.clone();
        let media = content_type.split(';').next().unwrap_or("").trim();
        match media {
            "application/merge-patch+json" => patch::merge_patch(&mut object, &patch),
            "application/strategic-merge-patch+json" => {
                patch::strategic_merge_patch(&mut object, &patch)
                    .map_err(|e| ApiError::new(400, "BadRequest", e))?
            }
            "application/json-patch+json" => patch::json_patch(&mut object, &patch)
                .map_err(|e| ApiError::invalid(key, format!("json patch: {e}")))?,
            other => {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "the body of the request was in an unknown format ({other:?}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (server-side apply is not implemented by this test API server)"
                    ),
                ))
            }
        }
        if object["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
            self.conflicts += 1;
            return Err(ApiError::conflict(key));
        }
        normalise(key, &mut object)?;
        self.finish_write(key, current, object, subresource)
    }

    /// Applies the registry-strategy rules for an update and commits unless it is a no-op.
    fn finish_write(
        &mut self,
        key: &ObjectKey,
        current: Value,
        mut object: Value,
        subresource: Option<&str>,
    ) -> Result<Value, ApiError> {
        // System fields are owned by the server.
        for field in ["uid", "creationTimestamp", "resourceVersion"] {
            object["metadata"][field] = current["metadata"][field].clone();
        }
        if object["metadata"]["name"] != current["metadata"]["name"] {
            return Err(ApiError::new(
                400,
                "BadRequest",
                format!(
                    "the name of the object ({}) does not match the name on the URL ({})",
                    object["metadata"]["name"], key.name
                ),
            ));
        }
        if key.resource == Resource::Nodes {
            match subresource {
                // The main resource ignores status; the status subresource changes only status.
                None => object["status"] = current["status"].clone(),
                Some("status") => {
                    let status = object["status"].clone();
                    object = current.clone();
                    object["status"] = status;
                }
                Some(other) => {
                    return Err(ApiError::new(
                        404,
                        "NotFound",
                        format!("subresource {other:?} not found"),
                    ))
                }
            }
            strip_nulls(&mut object);
        }
        validate(key, Some(&current), &object)?;
        if object == current {
            // An update that changes nothing is not written and bumps nothing (like the
            // apiserver's GuaranteedUpdate short-circuit).
            return Ok(current);
        }
        Ok(self.commit(key, object, "MODIFIED"))
    }

    /// Deletes an object. `precondition` is `DeleteOptions.preconditions.resourceVersion`.
    pub fn delete(
        &mut self,
        key: &ObjectKey,
        precondition: Option<&str>,
    ) -> Result<Value, ApiError> {
        let current = self
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(key))?;
        if let Some(rv) = precondition {
            if current["metadata"]["resourceVersion"].as_str() != Some(rv) {
                self.conflicts += 1;
                return Err(ApiError::conflict(key));
            }
        }
        Ok(self.commit(key, current, "DELETED"))
    }

    /// A harness write, bypassing validation (kubelet or a cloud controller): `f` gets the
    /// current object (or `None`) and returns the new one (or `None` to delete). Returns the
    /// resulting object.
    pub fn harness_write(
        &mut self,
        key: &ObjectKey,
        f: impl FnOnce(Option<Value>) -> Option<Value>,
    ) -> Option<Value> {
        let current = self.objects.get(key).cloned();
        let existed = current.is_some();
        match (f(current.clone()), current) {
            (Some(mut next), Some(current)) => {
                for field in ["uid", "creationTimestamp"] {
                    next["metadata"][field] = current["metadata"][field].clone();
                }
                next["metadata"]["resourceVersion"] =
                    current["metadata"]["resourceVersion"].clone();
                if next == current {
                    return Some(current);
                }
                Some(self.commit(key, next, "MODIFIED"))
            }
            (Some(next), None) => self.create(key, next).ok(),
            (None, Some(current)) => {
                self.commit(key, current, "DELETED");
                None
            }
            (None, None) => {
                debug_assert!(!existed);
                None
            }
        }
    }
}

/// Fills `kind`, `apiVersion`, `metadata.name` and `metadata.namespace` from the URL and
/// checks they agree with the body.
fn normalise(key: &ObjectKey, object: &mut Value) -> Result<(), ApiError> {
    let Value::Object(map) = object else {
        return Err(ApiError::new(
            400,
            "BadRequest",
            "the body must be a JSON object",
        ));
    };
    map.insert("kind".into(), Value::from(key.resource.kind()));
    map.insert("apiVersion".into(), Value::from(key.resource.api_version()));
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(meta) = meta else {
        return Err(ApiError::new(
            400,
            "BadRequest",
            "metadata must be an object",
        ));
    };
    match meta.get("name").and_then(Value::as_str) {
        None | Some("") => {
            meta.insert("name".into(), Value::from(key.name.clone()));
        }
        Some(name) if name != key.name => {
            return Err(ApiError::new(
                400,
                "BadRequest",
                format!(
                    "the name of the object ({name}) does not match the name on the URL ({})",
                    key.name
                ),
            ))
        }
        Some(_) => {}
    }
    match (
        &key.namespace,
        meta.get("namespace").and_then(Value::as_str),
    ) {
        (None, _) => {
            meta.remove("namespace");
        }
        (Some(ns), None | Some("")) => {
            meta.insert("namespace".into(), Value::from(ns.clone()));
        }
        (Some(ns), Some(body)) if body != ns => return Err(ApiError::new(
            400,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => {}
    }
    // The API server labels every namespace with its name (immutable).
    if key.resource == Resource::Namespaces {
        let labels = meta
            .entry("labels")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(labels) = labels {
            labels.insert(
                "kubernetes.io/metadata.name".into(),
                Value::from(key.name.clone()),
            );
        }
    }
    Ok(())
}

/// Removes `null` members (a merge patch may leave them inside replaced values).
fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// The API's validation for the fields this server cares about.
fn validate(key: &ObjectKey, old: Option<&Value>, object: &Value) -> Result<(), ApiError> {
    for field in ["annotations", "labels"] {
        match &object["metadata"][field] {
            Value::Null => {}
            Value::Object(map) => {
                if let Some((k, v)) = map.iter().find(|(_, v)| !v.is_string()) {
                    return Err(ApiError::new(
                        400,
                        "BadRequest",
                        format!("metadata.{field}[{k:?}]: expected a string, got {v}"),
                    ));
                }
            }
            other => {
                return Err(ApiError::new(
                    400,
                    "BadRequest",
                    format!("metadata.{field}: expected a map of strings, got {other}"),
                ))
            }
        }
    }
    match key.resource {
        Resource::ConfigMaps => match &object["data"] {
            Value::Null => {}
            Value::Object(map) if map.values().all(Value::is_string) => {}
            other => {
                return Err(ApiError::invalid(
                    key,
                    format!("data: expected a map of strings, got {other}"),
                ))
            }
        },
        Resource::Nodes => {
            let cidrs = &object["spec"]["podCIDRs"];
            if let Some(old) = old {
                let old_cidrs = &old["spec"]["podCIDRs"];
                if !old_cidrs.is_null() && old_cidrs != cidrs {
                    return Err(ApiError::invalid(
                        key,
                        "spec.podCIDRs: Forbidden: node updates may not change podCIDR except from \"\" to valid".into(),
                    ));
                }
            }
        }
        Resource::CoreEvents
        | Resource::Events
        | Resource::Namespaces
        | Resource::Pods
        | Resource::NetworkPolicies => {}
        Resource::EndpointSlices => validate_endpoint_slice(key, old, object)?,
    }
    Ok(())
}

/// An EndpointSlice's `addressType` (required, immutable) and its endpoints' addresses (1 to
/// 100 each, of that type), as the API validates them.
fn validate_endpoint_slice(
    key: &ObjectKey,
    old: Option<&Value>,
    object: &Value,
) -> Result<(), ApiError> {
    let address_type = object["addressType"].as_str().unwrap_or_default();
    if !["IPv4", "IPv6", "FQDN"].contains(&address_type) {
        return Err(ApiError::invalid(
            key,
            format!("addressType: Unsupported value: {address_type:?}: supported values: \"FQDN\", \"IPv4\", \"IPv6\""),
        ));
    }
    if let Some(old) = old {
        if old["addressType"] != object["addressType"] {
            return Err(ApiError::invalid(
                key,
                "addressType: Invalid value: field is immutable".into(),
            ));
        }
    }
    let endpoints = match &object["endpoints"] {
        Value::Null => &Vec::new(),
        Value::Array(items) => items,
        other => {
            return Err(ApiError::invalid(
                key,
                format!("endpoints: expected a list, got {other}"),
            ))
        }
    };
    for (i, endpoint) in endpoints.iter().enumerate() {
        let addresses = endpoint["addresses"]
            .as_array()
            .map_or(&[][..], Vec::as_slice);
        if addresses.is_empty() || addresses.len() > 100 {
            return Err(ApiError::invalid(
                key,
                format!(
                    "endpoints[{i}].addresses: must contain at least 1 and at most 100 addresses"
                ),
            ));
        }
        for (j, address) in addresses.iter().enumerate() {
            let text = address.as_str().unwrap_or_default();
            let ok = match address_type {
                "IPv4" => text.parse::<std::net::Ipv4Addr>().is_ok(),
                "IPv6" => text.parse::<std::net::Ipv6Addr>().is_ok(),
                _ => !text.is_empty(),
            };
            if !ok {
                return Err(ApiError::invalid(
                    key,
                    format!("endpoints[{i}].addresses[{j}]: Invalid value: {text:?}: must be a valid {address_type} address"),
                ));
            }
        }
    }
    Ok(())
}

/// RFC 3339 UTC timestamp, seconds precision (`metav1.Time`).
pub fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    i64::try_from(secs)
        .ok()
        .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
        .to_string()
}
