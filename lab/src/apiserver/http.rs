//! The HTTP surface: routes, query parameters, list and watch encoding.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::store::{ApiError, Change, ObjectKey, Resource, Store};

/// Shared state of the routes.
#[derive(Clone)]
pub(crate) struct App {
    pub(crate) store: Arc<Mutex<Store>>,
    pub(crate) audit: Arc<Mutex<super::audit::AuditLog>>,
    pub(crate) bookmark_interval: Duration,
}

impl App {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type Params = Query<HashMap<String, String>>;

/// The client address of a connection (inserted per connection by the server loop).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(pub(crate) std::net::IpAddr);

/// Logs every resource request's authorisation attributes (see [`super::audit`]).
async fn log_request(
    State(app): State<App>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(Peer(client)) = request.extensions().get::<Peer>().copied() {
        let query: HashMap<String, String> = Params::try_from_uri(request.uri())
            .map(|q| q.0)
            .unwrap_or_default();
        if let Some(entry) = super::audit::ApiRequest::parse(
            client,
            request.method().as_str(),
            request.uri().path(),
            &query,
        ) {
            app.audit
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(entry);
        }
    }
    next.run(request).await
}

/// The router for every served path.
pub(crate) fn router(app: App) -> Router {
    let collection = |resource: Resource| -> MethodRouter<App> {
        get(
            move |s: State<App>, p: Path<HashMap<String, String>>, q: Params, h: HeaderMap| {
                collection_get(s, p, q, h, resource)
            },
        )
        .post(
            move |s: State<App>, p: Path<HashMap<String, String>>, b: Bytes| {
                create(s, p, b, resource)
            },
        )
    };
    let all_namespaces = |resource: Resource| -> MethodRouter<App> {
        get(
            move |s: State<App>, p: Path<HashMap<String, String>>, q: Params, h: HeaderMap| {
                collection_get(s, p, q, h, resource)
            },
        )
    };
    let item = |resource: Resource, sub: Option<&'static str>| -> MethodRouter<App> {
        let any = move |s: State<App>,
                        m: Method,
                        p: Path<HashMap<String, String>>,
                        h: HeaderMap,
                        b: Bytes| item_request(s, m, p, h, b, resource, sub);
        get(any).put(any).patch(any).delete(any)
    };
    Router::new()
        .route("/version", get(version))
        .route("/api", get(api_versions))
        .route("/api/v1/nodes", collection(Resource::Nodes))
        .route("/api/v1/nodes/{name}", item(Resource::Nodes, None))
        .route("/api/v1/nodes/{name}/status", item(Resource::Nodes, Some("status")))
        .route("/api/v1/namespaces/{ns}/configmaps", collection(Resource::ConfigMaps))
        .route("/api/v1/namespaces/{ns}/configmaps/{name}", item(Resource::ConfigMaps, None))
        .route("/api/v1/namespaces/{ns}/events", collection(Resource::CoreEvents))
        .route("/api/v1/namespaces/{ns}/events/{name}", item(Resource::CoreEvents, None))
        .route("/apis/events.k8s.io/v1/namespaces/{ns}/events", collection(Resource::Events))
        .route(
            "/apis/events.k8s.io/v1/namespaces/{ns}/events/{name}",
            item(Resource::Events, None),
        )
        .route(
            "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
            collection(Resource::EndpointSlices),
        )
        .route(
            "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices/{name}",
            item(Resource::EndpointSlices, None),
        )
        // NetworkPolicy's objects (meshd::registry::kube::policy_objects): every namespace's
        // pods and policies are listed and watched at once (the paths without a namespace
        // serve only that, as the real API's do).
        .route("/api/v1/namespaces", collection(Resource::Namespaces))
        .route("/api/v1/namespaces/{name}", item(Resource::Namespaces, None))
        .route("/api/v1/pods", all_namespaces(Resource::Pods))
        .route("/api/v1/namespaces/{ns}/pods", collection(Resource::Pods))
        .route("/api/v1/namespaces/{ns}/pods/{name}", item(Resource::Pods, None))
        .route(
            "/apis/networking.k8s.io/v1/networkpolicies",
            all_namespaces(Resource::NetworkPolicies),
        )
        .route(
            "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
            collection(Resource::NetworkPolicies),
        )
        .route(
            "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/{name}",
            item(Resource::NetworkPolicies, None),
        )
        .fallback(|m: Method, uri: axum::http::Uri| async move {
            error(&ApiError::new(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({m} {uri}; this test API server serves only nodes, configmaps, events, endpointslices, namespaces, pods and networkpolicies)"),
            ))
        })
        .layer(axum::middleware::from_fn_with_state(app.clone(), log_request))
        .with_state(app)
}

async fn version() -> Response {
    json_response(
        StatusCode::OK,
        &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-meshd-test-apiserver", "platform": "linux/amd64"}),
    )
}

async fn api_versions() -> Response {
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
    )
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error(e: &ApiError) -> Response {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &e.status())
}

fn key_of(resource: Resource, path: &HashMap<String, String>, name: &str) -> ObjectKey {
    ObjectKey {
        resource,
        namespace: path.get("ns").cloned(),
        name: name.to_string(),
    }
}

/// A parsed `fieldSelector` plus `labelSelector` (equality-based only).
struct Selector {
    fields: Vec<(String, bool, String)>,
    labels: Vec<LabelRequirement>,
}

/// One equality-based label requirement.
enum LabelRequirement {
    /// `key=value` (`equal`) or `key!=value`.
    Compare {
        key: String,
        equal: bool,
        value: String,
    },
    /// `key` (`exists`) or `!key`.
    Presence { key: String, exists: bool },
}

impl Selector {
    fn parse(params: &HashMap<String, String>) -> Result<Self, ApiError> {
        let bad = |m: String| ApiError::new(400, "BadRequest", m);
        let mut fields = Vec::new();
        for term in split_terms(params.get("fieldSelector")) {
            let (field, eq, value) =
                split_eq(term).ok_or_else(|| bad(format!("invalid field selector {term:?}")))?;
            // `spec.nodeName` is a field label of Pods only (as on a real API server); here it
            // simply matches nothing else.
            if !matches!(
                field,
                "metadata.name" | "metadata.namespace" | "spec.nodeName"
            ) {
                return Err(bad(format!("field label not supported: {field}")));
            }
            fields.push((field.to_string(), eq, value.to_string()));
        }
        let mut labels = Vec::new();
        for term in split_terms(params.get("labelSelector")) {
            if term.contains(" in ") || term.contains(" notin ") || term.contains('(') {
                return Err(bad(format!(
                    "set-based label selector {term:?} is not supported by this test API server"
                )));
            }
            labels.push(match split_eq(term) {
                Some((key, equal, value)) => LabelRequirement::Compare {
                    key: key.to_string(),
                    equal,
                    value: value.to_string(),
                },
                None => match term.strip_prefix('!') {
                    Some(key) => LabelRequirement::Presence {
                        key: key.trim().to_string(),
                        exists: false,
                    },
                    None => LabelRequirement::Presence {
                        key: term.to_string(),
                        exists: true,
                    },
                },
            });
        }
        Ok(Self { fields, labels })
    }

    fn matches(&self, key: &ObjectKey, object: &Value) -> bool {
        let fields_ok = self.fields.iter().all(|(field, eq, value)| {
            let actual = match field.as_str() {
                "metadata.name" => Some(key.name.as_str()),
                "spec.nodeName" => object["spec"]["nodeName"].as_str(),
                _ => key.namespace.as_deref(),
            };
            (actual == Some(value.as_str())) == *eq
        });
        let labels = &object["metadata"]["labels"];
        let label = |key: &str| labels.get(key).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|req| match req {
            LabelRequirement::Compare { key, equal, value } => {
                (label(key) == Some(value.as_str())) == *equal
            }
            LabelRequirement::Presence { key, exists } => label(key).is_some() == *exists,
        });
        fields_ok && labels_ok
    }
}

fn split_terms(s: Option<&String>) -> impl Iterator<Item = &str> {
    s.map(String::as_str)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn split_eq(term: &str) -> Option<(&str, bool, &str)> {
    if let Some((k, v)) = term.split_once("!=") {
        return Some((k.trim(), false, v.trim()));
    }
    let (k, v) = term.split_once("==").or_else(|| term.split_once('='))?;
    Some((k.trim(), true, v.trim()))
}

fn truthy(params: &HashMap<String, String>, key: &str) -> bool {
    matches!(params.get(key).map(String::as_str), Some("1" | "true"))
}

async fn collection_get(
    State(app): State<App>,
    Path(path): Path<HashMap<String, String>>,
    Query(params): Params,
    headers: HeaderMap,
    resource: Resource,
) -> Response {
    let metadata_only = super::metadata::wanted(&headers);
    let selector = match Selector::parse(&params) {
        Ok(s) => s,
        Err(e) => return error(&e),
    };
    if truthy(&params, "watch") {
        return watch(
            app,
            path.get("ns").cloned(),
            params,
            selector,
            resource,
            metadata_only,
        );
    }
    let ns = path.get("ns").map(String::as_str);
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let after = params.get("continue").filter(|c| !c.is_empty());
    let store = app.lock();
    let filter = |k: &ObjectKey, v: &Value| selector.matches(k, v);
    let mut items: Vec<(ObjectKey, Value)> = store
        .list(resource, ns, &filter)
        .filter(|(k, _)| after.is_none_or(|a| continue_token(k) > *a))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut metadata = json!({"resourceVersion": store.resource_version().to_string()});
    if let Some(limit) = limit {
        if items.len() > limit {
            items.truncate(limit);
            if let Some((last, _)) = items.last() {
                metadata["continue"] = Value::from(continue_token(last));
                metadata["remainingItemCount"] = Value::from(0);
            }
        }
    }
    let items: Vec<Value> = items
        .into_iter()
        .map(|(_, mut v)| {
            if metadata_only {
                return super::metadata::partial(&v);
            }
            // Items of a list carry no kind/apiVersion, like the real API's.
            if let Value::Object(m) = &mut v {
                m.remove("kind");
                m.remove("apiVersion");
            }
            v
        })
        .collect();
    let (kind, api_version) = if metadata_only {
        (
            super::metadata::LIST_KIND.to_string(),
            super::metadata::API_VERSION,
        )
    } else {
        (format!("{}List", resource.kind()), resource.api_version())
    };
    json_response(
        StatusCode::OK,
        &json!({
            "kind": kind,
            "apiVersion": api_version,
            "metadata": metadata,
            "items": items,
        }),
    )
}

fn continue_token(key: &ObjectKey) -> String {
    format!("{}/{}", key.namespace.as_deref().unwrap_or(""), key.name)
}

async fn create(
    State(app): State<App>,
    Path(path): Path<HashMap<String, String>>,
    body: Bytes,
    resource: Resource,
) -> Response {
    let object: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(&ApiError::new(
                400,
                "BadRequest",
                format!("error decoding body: {e}"),
            ))
        }
    };
    let mut name = object["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    if name.is_empty() {
        match object["metadata"]["generateName"].as_str() {
            Some(prefix) => {
                let rv = app.lock().resource_version();
                name = format!("{prefix}{rv:05x}");
            }
            None => {
                return error(&ApiError::new(
                    422,
                    "Invalid",
                    "metadata.name: Required value: name or generateName is required",
                ))
            }
        }
    }
    let key = key_of(resource, &path, &name);
    let mut store = app.lock();
    store.count_write(&key);
    match store.create(&key, object) {
        Ok(v) => json_response(StatusCode::CREATED, &v),
        Err(e) => error(&e),
    }
}

async fn item_request(
    State(app): State<App>,
    method: Method,
    Path(path): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
    resource: Resource,
    subresource: Option<&'static str>,
) -> Response {
    let name = path.get("name").cloned().unwrap_or_default();
    let key = key_of(resource, &path, &name);
    let mut store = app.lock();
    let result = match method {
        Method::GET => store.api_get(&key),
        Method::PUT => {
            store.count_write(&key);
            match serde_json::from_slice(&body) {
                Ok(object) => store.update(&key, object, subresource),
                Err(e) => Err(ApiError::new(
                    400,
                    "BadRequest",
                    format!("error decoding body: {e}"),
                )),
            }
        }
        Method::PATCH => {
            store.count_write(&key);
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            store.patch(&key, content_type, &body, subresource)
        }
        Method::DELETE => {
            store.count_write(&key);
            let options: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let precondition = options["preconditions"]["resourceVersion"].as_str();
            store.delete(&key, precondition)
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported"),
        )),
    };
    match result {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => error(&e),
    }
}

/// One line of a watch response; with `metadata_only`, the object reduced to its metadata.
fn watch_line(kind: &str, object: &Value, metadata_only: bool) -> Bytes {
    let mut line = if metadata_only && kind != "ERROR" {
        json!({"type": kind, "object": super::metadata::partial(object)})
    } else {
        json!({"type": kind, "object": object})
    }
    .to_string();
    line.push('\n');
    Bytes::from(line)
}

/// What a watch stream has left to send.
struct WatchStream {
    resource: Resource,
    namespace: Option<String>,
    selector: Selector,
    backlog: VecDeque<Bytes>,
    changes: Option<broadcast::Receiver<Arc<Change>>>,
    /// The newest resourceVersion this stream has accounted for (sent or filtered out).
    seen: u64,
    bookmarks: Option<tokio::time::Interval>,
    deadline: tokio::time::Instant,
    /// Objects reduced to their metadata (`PartialObjectMetadata`).
    metadata_only: bool,
}

impl WatchStream {
    fn relevant(&self, change: &Change) -> bool {
        change.key.resource == self.resource
            && (self.namespace.is_none() || change.key.namespace == self.namespace)
            && self.selector.matches(&change.key, &change.object)
    }

    fn bookmark(&self) -> Bytes {
        watch_line(
            "BOOKMARK",
            &json!({
                "kind": self.resource.kind(),
                "apiVersion": self.resource.api_version(),
                "metadata": {"resourceVersion": self.seen.to_string()},
            }),
            self.metadata_only,
        )
    }

    /// The next line, or `None` when the watch ends (timeout, or the client fell behind).
    async fn next_line(&mut self) -> Option<Bytes> {
        if let Some(line) = self.backlog.pop_front() {
            return Some(line);
        }
        loop {
            let changes = self.changes.as_mut()?;
            let change = tokio::select! {
                biased;
                change = changes.recv() => change,
                _ = async {
                    match &mut self.bookmarks {
                        Some(interval) => interval.tick().await,
                        None => std::future::pending().await,
                    }
                } => return Some(self.bookmark()),
                () = tokio::time::sleep_until(self.deadline) => return None,
            };
            match change {
                Ok(change) => {
                    self.seen = self.seen.max(change.rv);
                    if self.relevant(&change) {
                        return Some(watch_line(change.kind, &change.object, self.metadata_only));
                    }
                }
                // Too slow a client: end the watch; it resumes from its last resourceVersion.
                Err(broadcast::error::RecvError::Lagged(_))
                | Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

fn watch(
    app: App,
    namespace: Option<String>,
    params: HashMap<String, String>,
    selector: Selector,
    resource: Resource,
    metadata_only: bool,
) -> Response {
    let from = params
        .get("resourceVersion")
        .map(String::as_str)
        .filter(|rv| !rv.is_empty() && *rv != "0");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let send_initial = truthy(&params, "sendInitialEvents");
    let mut backlog = VecDeque::new();
    let (changes, seen) = {
        let store = app.lock();
        let current = store.resource_version();
        match from {
            Some(rv) if !send_initial => {
                let rv = match rv.parse::<u64>() {
                    Ok(rv) => rv,
                    Err(_) => {
                        return error(&ApiError::new(
                            400,
                            "BadRequest",
                            format!("invalid resource version {rv:?}"),
                        ))
                    }
                };
                match store.watch_from(rv) {
                    Ok((history, rx)) => {
                        for change in history {
                            if change.key.resource == resource
                                && (namespace.is_none() || change.key.namespace == namespace)
                                && selector.matches(&change.key, &change.object)
                            {
                                backlog.push_back(watch_line(
                                    change.kind,
                                    &change.object,
                                    metadata_only,
                                ));
                            }
                        }
                        (Some(rx), current.max(rv))
                    }
                    Err(e) => {
                        // The real API server answers 200 and sends the 410 as an ERROR event.
                        backlog.push_back(watch_line("ERROR", &e.status(), false));
                        (None, current)
                    }
                }
            }
            _ => {
                // No resourceVersion (or "0"), or a streaming list: synthetic ADDED events for
                // the current state, then changes.
                let filter = |k: &ObjectKey, v: &Value| selector.matches(k, v);
                for (_, object) in store.list(resource, namespace.as_deref(), &filter) {
                    backlog.push_back(watch_line("ADDED", object, metadata_only));
                }
                if send_initial {
                    backlog.push_back(watch_line(
                        "BOOKMARK",
                        &json!({
                            "kind": resource.kind(),
                            "apiVersion": resource.api_version(),
                            "metadata": {
                                "resourceVersion": current.to_string(),
                                "annotations": {"k8s.io/initial-events-end": "true"},
                            },
                        }),
                        metadata_only,
                    ));
                }
                (Some(store.subscribe()), current)
            }
        }
    };
    let bookmarks = truthy(&params, "allowWatchBookmarks").then(|| {
        let mut interval = tokio::time::interval_at(
            tokio::time::Instant::now() + app.bookmark_interval,
            app.bookmark_interval,
        );
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    let state = WatchStream {
        resource,
        namespace,
        selector,
        backlog,
        changes,
        seen,
        bookmarks,
        deadline: tokio::time::Instant::now() + Duration::from_secs(timeout),
        metadata_only,
    };
    let stream = futures::stream::unfold(state, |mut state| async move {
        let line = state.next_line().await?;
        Some((Ok::<_, Infallible>(line), state))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}
