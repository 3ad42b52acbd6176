//! The OCI Distribution API under `/v2/` (the subset Docker and skopeo use to push and pull):
//! base check, blob HEAD/GET, streamed, monolithic and chunked uploads, cross-repository mount,
//! manifests by tag and digest, tag listing. Authentication is ECR's: HTTP Basic with user
//! `AWS` and a password from GetAuthorizationToken.

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use fleetport_proto::auth::{Access, Principal, RequestFacts};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};

use crate::blobs::{BlobError, parse_digest};
use crate::repo::{ManifestRecord, RepoRecord};
use crate::{Ecr, now_secs};

/// Manifests larger than ECR's limit are refused.
const MAX_MANIFEST: usize = 4 * 1024 * 1024;

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
];

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"errors": [{"code": code, "message": message, "detail": null}]});
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn boxed(status: StatusCode, code: &str, message: &str) -> Box<Response> {
    Box::new(error(status, code, message))
}

fn empty(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

fn set(r: &mut Response, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

/// OCI repository names: lowercase components joined by `/`, separators `.`, `_`, `__`, `-+`.
pub fn valid_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 255 {
        return false;
    }
    name.split('/').all(|component| {
        let b = component.as_bytes();
        if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric()
        {
            return false;
        }
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                i += 1;
                continue;
            }
            // A separator run: '.', '_', '__', or any number of '-'.
            let start = i;
            while i < b.len() && matches!(b[i], b'.' | b'_' | b'-') {
                i += 1;
            }
            let sep = &component[start..i];
            // An empty run means a character that is neither allowed nor a separator.
            let ok = !sep.is_empty()
                && (sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-'));
            if !ok || i >= b.len() {
                return false;
            }
        }
        true
    })
}

fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

enum Route<'a> {
    Base,
    Catalog,
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    Referrers(&'a str, &'a str),
    Blob(&'a str, &'a str),
    Uploads(&'a str, Option<&'a str>),
}

fn route(rest: &str) -> Option<Route<'_>> {
    if rest.is_empty() {
        return Some(Route::Base);
    }
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags(name));
    }
    if let Some((name, digest)) = rest.rsplit_once("/referrers/")
        && parse_digest(digest).is_some()
    {
        return Some(Route::Referrers(name, digest));
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        return Some(Route::Manifest(name, reference));
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Some(Route::Uploads(name, None));
    }
    if let Some((name, id)) = rest.rsplit_once("/blobs/uploads/") {
        return Some(Route::Uploads(name, Some(id)));
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        return Some(Route::Blob(name, digest));
    }
    None
}

/// Whose registry (account, and region when it names one) a request is for: the registry a
/// layer download URL was signed by, else the one its password was issued by. Read without
/// checking anything, to pick the registry that then checks it all.
pub fn registry_of(headers: &HeaderMap, query: &str) -> Option<(String, Option<String>)> {
    if let Some(r) = query_param(query, "X-Fleetport-Registry") {
        let (account, region) = r.split_once('@')?;
        return Some((account.to_string(), Some(region.to_string())));
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let decoded = STANDARD.decode(auth.strip_prefix("Basic ")?.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (_, password) = decoded.split_once(':')?;
    crate::token::registry_of(password)
}

fn query_param(query: &str, name: &str) -> Option<String> {
    form_pairs(query).find(|(k, _)| k == name).map(|(_, v)| v)
}

fn form_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        let dec = |s: &str| percent_decode(s);
        (dec(k), dec(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(v) = u8::from_str_radix(
                std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                16,
            )
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Ecr {
    fn challenge(&self, message: &str) -> Response {
        let mut r = error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message);
        let realm = format!(
            "Basic realm=\"http://{}/\",service=\"ecr.amazonaws.com\"",
            self.registry_host
        );
        set(&mut r, "www-authenticate", &realm);
        r
    }

    /// ECR's registry auth: Basic `AWS:<password from GetAuthorizationToken>`. Returns whom the
    /// password stands for.
    fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Box<Response>> {
        let Some(auth) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return Err(Box::new(self.challenge("Not Authorized")));
        };
        let decoded = auth
            .strip_prefix("Basic ")
            .and_then(|b| STANDARD.decode(b.trim()).ok())
            .and_then(|b| String::from_utf8(b).ok());
        let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
            return Err(Box::new(self.challenge("Not Authorized")));
        };
        if user != "AWS" {
            return Err(Box::new(self.challenge("Not Authorized")));
        }
        match self.token_key.verify(password, now_secs()) {
            Ok(issued)
                if issued.account == self.scope.account
                    && issued
                        .region
                        .as_ref()
                        .is_none_or(|r| *r == self.scope.region) =>
            {
                match issued.principal {
                    None => Ok(Principal::root(&issued.account)),
                    Some(text) => Principal::decode(&text)
                        .filter(|p| p.account_id == issued.account)
                        .ok_or_else(|| {
                            Box::new(self.challenge("the registry password is malformed"))
                        }),
                }
            }
            Ok(_) => Err(boxed(
                StatusCode::FORBIDDEN,
                "DENIED",
                "The token was issued for another account or region.",
            )),
            Err(e) => Err(Box::new(self.challenge(&e.to_string()))),
        }
    }

    /// Authorises a registry request as the ECR action it amounts to, on the repository's ARN
    /// (ECR's mapping: pulls are BatchGetImage and GetDownloadUrlForLayer, pushes
    /// InitiateLayerUpload, UploadLayerPart, CompleteLayerUpload and PutImage). A denial is
    /// Docker's `denied: <AWS's text>`.
    fn permit(
        &self,
        principal: &Principal,
        route: &Route<'_>,
        method: &Method,
        query: &str,
    ) -> Result<(), Box<Response>> {
        if principal.is_root() {
            return Ok(());
        }
        let arn = |name: &str| {
            format!(
                "arn:aws:ecr:{}:{}:repository/{name}",
                self.scope.region, self.scope.account
            )
        };
        let mut needs: Vec<(&str, String)> = Vec::new();
        match route {
            Route::Base => {}
            Route::Catalog => needs.push(("ecr:DescribeRepositories", "*".into())),
            Route::Tags(name) => needs.push(("ecr:ListImages", arn(name))),
            Route::Manifest(name, _) => needs.push((
                match *method {
                    Method::PUT => "ecr:PutImage",
                    Method::DELETE => "ecr:BatchDeleteImage",
                    _ => "ecr:BatchGetImage",
                },
                arn(name),
            )),
            Route::Referrers(name, _) => needs.push(("ecr:BatchGetImage", arn(name))),
            Route::Blob(name, _) => needs.push((
                if *method == Method::HEAD {
                    "ecr:BatchCheckLayerAvailability"
                } else {
                    "ecr:GetDownloadUrlForLayer"
                },
                arn(name),
            )),
            Route::Uploads(name, id) => {
                let action = match (method, id) {
                    (&Method::POST, None) | (&Method::DELETE, _) => "ecr:InitiateLayerUpload",
                    (&Method::PUT, _) => "ecr:CompleteLayerUpload",
                    _ => "ecr:UploadLayerPart",
                };
                needs.push((action, arn(name)));
                // Mounting reads the blob from the other repository.
                if let Some(from) = query_param(query, "from").filter(|_| id.is_none()) {
                    needs.push(("ecr:GetDownloadUrlForLayer", arn(&from)));
                }
            }
        }
        let accesses: Vec<Access> = needs
            .into_iter()
            .map(|(action, resource)| Access {
                action: action.to_string(),
                resource_policy: self.policy_of_arn(&resource),
                resource,
                context: Vec::new(),
            })
            .collect();
        let facts = RequestFacts {
            region: self.scope.region.clone(),
            source_ip: None,
            secure_transport: false,
            token_issued_at: None,
        };
        fleetport_proto::auth::check(self.authorizer.get(), principal, &accesses, &facts).map_err(
            |message| {
                tracing::debug!(%message, "registry request denied");
                boxed(StatusCode::FORBIDDEN, "DENIED", &message)
            },
        )
    }

    /// A GetDownloadUrlForLayer URL stands in for credentials, for its one blob, until it expires.
    fn verify_download_url(
        &self,
        name: &str,
        digest: &str,
        query: &str,
    ) -> Result<(), Box<Response>> {
        let expires = query_param(query, "X-Fleetport-Expires")
            .and_then(|e| e.parse::<i64>().ok())
            .unwrap_or(0);
        let signature = query_param(query, "X-Fleetport-Signature").unwrap_or_default();
        self.token_key
            .verify_download(name, digest, expires, &signature, now_secs())
            .map_err(|e| {
                let why = match e {
                    crate::token::TokenError::Expired => "it has expired",
                    _ => "its signature does not match",
                };
                boxed(
                    StatusCode::FORBIDDEN,
                    "DENIED",
                    &format!("The layer download URL is not valid: {why}."),
                )
            })
    }

    fn repository(&self, name: &str) -> Result<RepoRecord, Box<Response>> {
        if !valid_name(name) {
            return Err(boxed(
                StatusCode::BAD_REQUEST,
                "NAME_INVALID",
                &format!("Invalid repository name '{name}'."),
            ));
        }
        match self.find_repository(name) {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(boxed(
                StatusCode::NOT_FOUND,
                "NAME_UNKNOWN",
                &format!(
                    "The repository with name '{name}' does not exist in the registry with id '{}'",
                    self.scope.account
                ),
            )),
            Err(_) => Err(boxed(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                "internal error",
            )),
        }
    }

    /// Answers one `/v2/…` request. `rest` is the path after `/v2/`.
    pub async fn registry(&self, req: Request) -> Response {
        let mut resp = self.registry_inner(req).await;
        resp.headers_mut().insert(
            "docker-distribution-api-version",
            HeaderValue::from_static("registry/2.0"),
        );
        resp
    }

    async fn registry_inner(&self, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path();
        let rest = path
            .strip_prefix("/v2")
            .unwrap_or(path)
            .trim_start_matches('/');
        let query = parts.uri.query().unwrap_or("");
        let route = route(rest);
        let presigned = match route {
            Some(Route::Blob(name, digest))
                if matches!(parts.method, Method::GET | Method::HEAD)
                    && query_param(query, "X-Fleetport-Signature").is_some() =>
            {
                match self.verify_download_url(name, digest, query) {
                    Ok(()) => true,
                    Err(r) => return *r,
                }
            }
            _ => false,
        };
        if !presigned {
            let principal = match self.authenticate(&parts.headers) {
                Ok(p) => p,
                Err(r) => return *r,
            };
            if let Some(route) = &route
                && let Err(r) = self.permit(&principal, route, &parts.method, query)
            {
                return *r;
            }
        }
        let Some(route) = route else {
            return error(
                StatusCode::NOT_FOUND,
                "NAME_UNKNOWN",
                "Unknown registry path.",
            );
        };
        let method = parts.method.clone();
        match route {
            Route::Base => {
                let mut r = Response::new(Body::from("{}"));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
            }
            Route::Catalog => self.catalog(query),
            Route::Tags(name) => match self.repository(name) {
                Ok(_) => self.tags(name, query),
                Err(r) => *r,
            },
            Route::Manifest(name, reference) => {
                let repo = match self.repository(name) {
                    Ok(r) => r,
                    Err(r) => return *r,
                };
                match method {
                    Method::GET | Method::HEAD => {
                        self.get_manifest(&repo, reference, &parts.headers, method == Method::HEAD)
                    }
                    Method::PUT => {
                        let tags: Vec<String> = form_pairs(query)
                            .filter(|(k, _)| k == "tag")
                            .map(|(_, v)| v)
                            .collect();
                        self.put_manifest(&repo, reference, &tags, &parts.headers, body)
                            .await
                    }
                    Method::DELETE => self.delete_manifest(&repo, reference).await,
                    _ => error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "UNSUPPORTED",
                        "Method not allowed.",
                    ),
                }
            }
            Route::Referrers(name, digest) => {
                if let Err(r) = self.repository(name) {
                    return *r;
                }
                let filter = query_param(query, "artifactType");
                match self.referrers(name, digest, filter.as_deref()) {
                    Ok(manifests) => {
                        let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
                        let mut r = Response::new(Body::from(index.to_string()));
                        set(
                            &mut r,
                            "content-type",
                            "application/vnd.oci.image.index.v1+json",
                        );
                        if filter.is_some() {
                            set(&mut r, "oci-filters-applied", "artifactType");
                        }
                        r
                    }
                    Err(_) => error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "UNKNOWN",
                        "internal error",
                    ),
                }
            }
            Route::Blob(name, digest) => {
                if let Err(r) = self.repository(name) {
                    return *r;
                }
                match method {
                    Method::GET | Method::HEAD => {
                        self.get_blob(name, digest, method == Method::HEAD, &parts.headers)
                            .await
                    }
                    _ => error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "UNSUPPORTED",
                        "Blobs are deleted with their images.",
                    ),
                }
            }
            Route::Uploads(name, id) => {
                if let Err(r) = self.repository(name) {
                    return *r;
                }
                self.uploads(name, id, &method, query, &parts.headers, body)
                    .await
            }
        }
    }

    fn catalog(&self, query: &str) -> Response {
        let names = self.repository_names().unwrap_or_default();
        let (page, next) = paginate(names, query);
        let mut r = json_response(&json!({"repositories": page}));
        if let Some(last) = next {
            set(
                &mut r,
                "link",
                &format!(
                    "</v2/_catalog?last={last}&n={}>; rel=\"next\"",
                    page_size(query)
                ),
            );
        }
        r
    }

    fn tags(&self, name: &str, query: &str) -> Response {
        let tags = self.tag_names(name).unwrap_or_default();
        let (page, next) = paginate(tags, query);
        let mut r = json_response(&json!({"name": name, "tags": page}));
        if let Some(last) = next {
            set(
                &mut r,
                "link",
                &format!(
                    "</v2/{name}/tags/list?last={last}&n={}>; rel=\"next\"",
                    page_size(query)
                ),
            );
        }
        r
    }

    fn get_manifest(
        &self,
        repo: &RepoRecord,
        reference: &str,
        headers: &HeaderMap,
        head: bool,
    ) -> Response {
        let unknown = || {
            error(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                &format!("Requested image not found: {reference}"),
            )
        };
        let found = match self.resolve(&repo.name, reference) {
            Ok(Some(m)) => m,
            Ok(None) => return unknown(),
            Err(_) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "UNKNOWN",
                    "internal error",
                );
            }
        };
        if !accepts(headers, &found.media_type) {
            return unknown();
        }
        let bytes = found.bytes();
        let len = bytes.len();
        let mut r = Response::new(if head {
            Body::empty()
        } else {
            Body::from(bytes)
        });
        set(&mut r, "content-type", &found.media_type);
        set(&mut r, "docker-content-digest", &found.digest);
        set(&mut r, "content-length", &len.to_string());
        r
    }

    async fn put_manifest(
        &self,
        repo: &RepoRecord,
        reference: &str,
        tags: &[String],
        headers: &HeaderMap,
        body: Body,
    ) -> Response {
        let Ok(bytes) = axum::body::to_bytes(body, MAX_MANIFEST).await else {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "SIZE_INVALID",
                "The manifest is larger than 4 MiB.",
            );
        };
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or("").trim().to_string());
        let subject = serde_json::from_slice::<Value>(&bytes).ok().and_then(|d| {
            d.pointer("/subject/digest")
                .and_then(Value::as_str)
                .map(String::from)
        });
        match self
            .store_manifest(repo, reference, tags, content_type, bytes)
            .await
        {
            Ok(digest) => {
                let mut r = empty(StatusCode::CREATED);
                if let Some(s) = subject {
                    set(&mut r, "oci-subject", &s);
                }
                set(
                    &mut r,
                    "location",
                    &format!("/v2/{}/manifests/{digest}", repo.name),
                );
                set(&mut r, "docker-content-digest", &digest);
                for tag in tags {
                    if let Ok(v) = HeaderValue::from_str(tag) {
                        r.headers_mut().append("oci-tag", v);
                    }
                }
                r
            }
            Err((status, code, message)) => error(status, code, &message),
        }
    }

    async fn delete_manifest(&self, repo: &RepoRecord, reference: &str) -> Response {
        match self.remove_reference(&repo.name, reference).await {
            Ok(true) => empty(StatusCode::ACCEPTED),
            Ok(false) => error(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                &format!("Requested image not found: {reference}"),
            ),
            Err(_) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                "internal error",
            ),
        }
    }

    async fn get_blob(
        &self,
        repository: &str,
        digest: &str,
        head: bool,
        headers: &HeaderMap,
    ) -> Response {
        if parse_digest(digest).is_none() {
            return error(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                "The digest is not a valid sha256 digest.",
            );
        }
        // Served only through a repository that holds it.
        let size = if self.holds_and_touch(repository, digest).await {
            self.blobs.size(digest).await
        } else {
            None
        };
        let Some(size) = size else {
            return error(
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                &format!("blob unknown to registry: {digest}"),
            );
        };
        let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
            None => None,
            Some(r) => match parse_range(r, size) {
                Some(range) => Some(range),
                None => {
                    let mut r = error(
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        "RANGE_INVALID",
                        "The requested range is not satisfiable.",
                    );
                    set(&mut r, "content-range", &format!("bytes */{size}"));
                    return r;
                }
            },
        };
        let (start, end) = range.unwrap_or((0, size.saturating_sub(1)));
        let length = if size == 0 { 0 } else { end - start + 1 };
        let body = if head || length == 0 {
            Body::empty()
        } else {
            match self.blobs.read(digest, start, length).await {
                Ok(stream) => Body::from_stream(stream),
                Err(_) => {
                    return error(
                        StatusCode::NOT_FOUND,
                        "BLOB_UNKNOWN",
                        "blob unknown to registry",
                    );
                }
            }
        };
        let mut r = Response::new(body);
        if range.is_some() {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            set(
                &mut r,
                "content-range",
                &format!("bytes {start}-{end}/{size}"),
            );
        }
        set(&mut r, "content-type", "application/octet-stream");
        set(&mut r, "content-length", &length.to_string());
        set(&mut r, "accept-ranges", "bytes");
        set(&mut r, "docker-content-digest", digest);
        r
    }

    async fn uploads(
        &self,
        name: &str,
        id: Option<&str>,
        method: &Method,
        query: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Response {
        let location = |id: &str| format!("/v2/{name}/blobs/uploads/{id}");
        let accepted = |id: &str, written: u64| {
            let mut r = empty(StatusCode::ACCEPTED);
            set(&mut r, "location", &location(id));
            set(&mut r, "docker-upload-uuid", id);
            set(&mut r, "range", &format!("0-{}", written.saturating_sub(1)));
            set(&mut r, "content-length", "0");
            r
        };
        let created = |digest: &str| {
            let mut r = empty(StatusCode::CREATED);
            set(&mut r, "location", &format!("/v2/{name}/blobs/{digest}"));
            set(&mut r, "docker-content-digest", digest);
            set(&mut r, "content-length", "0");
            r
        };
        match (method, id) {
            (&Method::POST, None) => {
                // A mount needs `from`, a repository that holds the blob; otherwise the request
                // becomes a plain upload, as the distribution spec says.
                if let Some(mount) = query_param(query, "mount")
                    && parse_digest(&mount).is_some()
                {
                    let from = query_param(query, "from").unwrap_or_default();
                    let linked = if from == name {
                        self.holds(name, &mount)
                    } else {
                        valid_name(&from)
                            && self.repository(&from).is_ok()
                            && self.holds(&from, &mount)
                            && self.link_blob(name, &mount).await.is_ok()
                    };
                    if linked && self.blobs.size(&mount).await.is_some() {
                        return created(&mount);
                    }
                }
                let id = match self.blobs.start(name).await {
                    Ok(id) => id,
                    Err(e) => return blob_error(e),
                };
                if let Some(digest) = query_param(query, "digest") {
                    // Monolithic upload: the body is the whole blob.
                    if let Err(e) = self
                        .blobs
                        .append(&id, name, None, body.into_data_stream())
                        .await
                    {
                        let _ = self.blobs.cancel(&id, name).await;
                        return blob_error(e);
                    }
                    return match self.finish_upload(&id, name, &digest).await {
                        Ok(_) => created(&digest),
                        Err(e) => blob_error(e),
                    };
                }
                accepted(&id, 0)
            }
            (&Method::PATCH, Some(id)) => {
                let start = match headers.get(header::CONTENT_RANGE) {
                    None => None,
                    Some(v) => match chunk_range(v, headers) {
                        Some(start) => Some(start),
                        None => {
                            return error(
                                StatusCode::BAD_REQUEST,
                                "BLOB_UPLOAD_INVALID",
                                "Content-Range must be <start>-<end> (inclusive, end >= start) and match Content-Length.",
                            );
                        }
                    },
                };
                match self
                    .blobs
                    .append(id, name, start, body.into_data_stream())
                    .await
                {
                    Ok(written) => accepted(id, written),
                    Err(e) => blob_error(e),
                }
            }
            (&Method::PUT, Some(id)) => {
                let Some(digest) = query_param(query, "digest") else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "DIGEST_INVALID",
                        "The digest query parameter is required.",
                    );
                };
                if parse_digest(&digest).is_none() {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "DIGEST_INVALID",
                        "The digest is not a valid sha256 digest.",
                    );
                }
                if let Err(e) = self
                    .blobs
                    .append(id, name, None, body.into_data_stream())
                    .await
                {
                    return blob_error(e);
                }
                match self.finish_upload(id, name, &digest).await {
                    Ok(_) => created(&digest),
                    Err(e) => blob_error(e),
                }
            }
            (&Method::GET, Some(id)) => match self.blobs.offset(id, name) {
                Ok(written) => {
                    let mut r = accepted(id, written);
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    r
                }
                Err(e) => blob_error(e),
            },
            (&Method::DELETE, Some(id)) => match self.blobs.cancel(id, name).await {
                Ok(()) => empty(StatusCode::NO_CONTENT),
                Err(e) => blob_error(e),
            },
            _ => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                "Method not allowed.",
            ),
        }
    }
}

/// The first byte of a chunk from its `Content-Range` (`<start>-<end>`, inclusive, as Docker
/// sends it, or with a `bytes ` prefix); `None` when malformed or when its length disagrees
/// with `Content-Length`.
fn chunk_range(value: &HeaderValue, headers: &HeaderMap) -> Option<u64> {
    let text = value.to_str().ok()?.trim();
    let text = text.strip_prefix("bytes ").unwrap_or(text);
    let (start, end) = text.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(start) || !digits(end) {
        return None;
    }
    let (start, end) = (start.parse::<u64>().ok()?, end.parse::<u64>().ok()?);
    if end < start {
        return None;
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match length {
        Some(n) if n != end - start + 1 => None,
        _ => Some(start),
    }
}

fn blob_error(e: BlobError) -> Response {
    match e {
        BlobError::UploadExpired => error(
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
            "the upload session expired after a period without data; start a new upload",
        ),
        BlobError::UploadUnknown => error(
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
            "blob upload unknown to registry",
        ),
        BlobError::DigestMismatch => error(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            "provided digest did not match uploaded content",
        ),
        BlobError::BadDigest => error(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            "The digest is not a valid sha256 digest.",
        ),
        BlobError::OutOfOrder { expected } => {
            let mut r = error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "BLOB_UPLOAD_INVALID",
                &format!("chunk out of order; the next byte expected is {expected}"),
            );
            set(
                &mut r,
                "range",
                &format!("0-{}", expected.saturating_sub(1)),
            );
            r
        }
        BlobError::ClientAborted(e) => {
            tracing::debug!(error = %e, "upload body ended early; the received part is kept");
            error(
                StatusCode::BAD_REQUEST,
                "BLOB_UPLOAD_INVALID",
                "the upload body ended early; resume from the reported range",
            )
        }
        e @ BlobError::TooManyUploads(_) => error(
            StatusCode::TOO_MANY_REQUESTS,
            "TOOMANYREQUESTS",
            &e.to_string(),
        ),
        e @ BlobError::UploadsTooLarge(_) => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "SIZE_INVALID",
            &e.to_string(),
        ),
        BlobError::Io(e) => {
            tracing::error!(error = %e, "blob storage failure");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                "storage failure",
            )
        }
    }
}

fn json_response(v: &Value) -> Response {
    let mut r = Response::new(Body::from(v.to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn page_size(query: &str) -> usize {
    query_param(query, "n")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
}

/// `n`/`last` paging over sorted names; returns the page and the last item when more follow.
fn paginate(mut items: Vec<String>, query: &str) -> (Vec<String>, Option<String>) {
    items.sort();
    if let Some(last) = query_param(query, "last") {
        items.retain(|t| *t > last);
    }
    let n = page_size(query);
    let more = items.len() > n;
    items.truncate(n);
    let next = if more { items.last().cloned() } else { None };
    (items, next)
}

/// Whether any `Accept` header (Docker sends several) allows `media_type`.
fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let mut any = false;
    for v in headers.get_all(header::ACCEPT) {
        for item in v.to_str().unwrap_or("").split(',') {
            any = true;
            let t = item.split(';').next().unwrap_or("").trim();
            if t == media_type || t == "*/*" {
                return true;
            }
        }
    }
    !any
}

/// One `bytes=` range (`a-b`, `a-`, or the suffix form `-n`) within `size`, inclusive.
fn parse_range(header: &str, size: u64) -> Option<(u64, u64)> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (size.saturating_sub(n), size - 1)
        }
        (a, "") => (a.parse().ok()?, size - 1),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.min(size - 1)),
    };
    (start <= end && start < size).then_some((start, end))
}

/// Is `media_type` one the registry stores as a manifest?
pub fn is_manifest_type(media_type: &str) -> bool {
    MANIFEST_TYPES.contains(&media_type)
}

pub fn tag_ok(tag: &str) -> bool {
    valid_tag(tag)
}

impl ManifestRecord {
    pub fn bytes(&self) -> Bytes {
        Bytes::from(STANDARD.decode(&self.body).unwrap_or_default())
    }

    /// The blobs the manifest names: its config and its layers (none for an index).
    pub fn blob_digests(&self) -> Vec<String> {
        let Ok(doc) = serde_json::from_slice::<Value>(&self.bytes()) else {
            return Vec::new();
        };
        let config = doc.get("config").into_iter();
        let layers = doc
            .get("layers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        config
            .chain(layers)
            .filter_map(|x| x.get("digest").and_then(Value::as_str))
            .map(String::from)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_oci_grammar() {
        for ok in [
            "web",
            "a/b",
            "my-app",
            "a__b",
            "a.b",
            "a---b",
            "team/app.v2",
        ] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Web",
            "wEb",
            "a b",
            "a:b",
            "a/../b",
            "..",
            "a_",
            "-a",
            "a//b",
            "a___b",
            "a.-b",
            &"x".repeat(256),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(valid_tag("v1.0_rc-1") && !valid_tag(".x") && !valid_tag(&"t".repeat(129)));
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-4", 10), Some((0, 4)));
        assert_eq!(parse_range("bytes=5-", 10), Some((5, 9)));
        assert_eq!(parse_range("bytes=-3", 10), Some((7, 9)));
        assert_eq!(parse_range("bytes=8-100", 10), Some((8, 9)));
        assert_eq!(parse_range("bytes=10-", 10), None);
        assert_eq!(parse_range("bytes=4-2", 10), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 10), None);
        assert_eq!(parse_range("items=0-1", 10), None);
    }

    #[test]
    fn routes() {
        assert!(matches!(route(""), Some(Route::Base)));
        assert!(matches!(
            route("a/b/manifests/latest"),
            Some(Route::Manifest("a/b", "latest"))
        ));
        assert!(matches!(
            route("a/blobs/uploads/"),
            Some(Route::Uploads("a", None))
        ));
        assert!(matches!(
            route("a/blobs/uploads/123"),
            Some(Route::Uploads("a", Some("123")))
        ));
        assert!(matches!(
            route("a/blobs/sha256:00"),
            Some(Route::Blob("a", "sha256:00"))
        ));
        assert!(matches!(route("a/tags/list"), Some(Route::Tags("a"))));
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Name checks and routing terminate and never panic on any path.
        #[test]
        fn any_path_is_classified(path in "[ -~]{0,80}", name in "[a-zA-Z0-9._/:@ -]{0,40}") {
            let _ = route(&path);
            let _ = valid_name(&name);
            let _ = valid_tag(&name);
            let _ = percent_decode(&path);
        }
    }
}
