//! One entry point for every AWS API request: classifies the protocol (awsJson by `X-Amz-Target`,
//! awsQuery by `Action`/`Version`), verifies SigV4, decodes and validates the input against the
//! model, calls the owning service and encodes the answer or the error in that protocol's shape.
//! It knows nothing about HTTP servers: it takes request parts and returns an `http::Response`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use serde_json::Value;

use crate::auth::{self, Access, Authorizer, Principal, RequestFacts};
use crate::error::AwsError;
use crate::model::{self, ServiceModel};
use crate::query;
use crate::sigv4::{PayloadRule, SigError, SignedRequest, Verifier};
use crate::validate::{self, Invalid};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a handler knows about the caller.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub access_key: String,
    pub account_id: String,
    pub region: String,
    /// Who signed: the account's root for static keys, an IAM user for IAM's keys.
    pub principal: Principal,
}

impl RequestContext {
    /// The IAM principal AWS reports as `registeredBy`/`createdBy` for this caller.
    pub fn principal_arn(&self) -> String {
        self.principal.arn.clone()
    }
}

/// A service answering one AWS API. Input arrives validated against the model; the output
/// document must conform to the operation's output shape.
pub trait Service: Send + Sync {
    fn model(&self) -> &'static ServiceModel;

    /// The code used for model constraint failures (missing required members, enums, ranges).
    fn constraint_error_code(&self) -> &'static str;

    /// Whether `operation` is implemented (others get a clear error without being called).
    fn implements(&self, operation: &str) -> bool;

    fn call<'a>(
        &'a self,
        ctx: &'a RequestContext,
        operation: &'a str,
        input: Value,
    ) -> BoxFuture<'a, Result<Value, AwsError>>;

    /// The resources (ARNs) `operation` acts on, for authorisation; `*` for actions IAM checks
    /// against no particular resource (AWS's "resource types" of the action).
    fn resources(&self, ctx: &RequestContext, operation: &str, input: &Value) -> Vec<String> {
        let _ = (ctx, operation, input);
        vec!["*".to_string()]
    }

    /// The policy a resource carries itself (an ECR repository policy), if any.
    fn resource_policy(&self, resource: &str) -> Option<String> {
        let _ = resource;
        None
    }

    /// The tags a resource carries, for `aws:ResourceTag/<key>` conditions (and the service's
    /// own `<prefix>:ResourceTag/<key>`).
    fn resource_tags(&self, resource: &str) -> Vec<(String, String)> {
        let _ = resource;
        Vec::new()
    }

    /// Permissions an operation needs besides its own action, such as `iam:PassRole` on the
    /// roles a task definition hands to ECS.
    fn also_needs(&self, ctx: &RequestContext, operation: &str, input: &Value) -> Vec<Access> {
        let _ = (ctx, operation, input);
        Vec::new()
    }
}

/// Static configuration of the gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub region: String,
    pub account_id: String,
}

/// Which wire protocol a request speaks; decides the shape of every answer including errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Json,
    Query,
}

/// ECS and ECR check SigV4 dates against a 5-minute window; query services allow 15 minutes.
const JSON_SKEW_SECS: i64 = 300;
const QUERY_SKEW_SECS: i64 = 900;

/// A known API: its model, and its implementation once one is attached.
type Api = (&'static ServiceModel, Option<Arc<dyn Service>>);

pub struct Gateway {
    config: GatewayConfig,
    verifier: Arc<Verifier>,
    /// Evaluates the policies of non-root callers (IAM); without one they are refused.
    authorizer: Option<Arc<dyn Authorizer>>,
    /// awsJson APIs by `X-Amz-Target` prefix.
    json: HashMap<&'static str, Api>,
    /// awsQuery APIs by (signing name, API version).
    query: HashMap<(&'static str, &'static str), Api>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The request as the HTTP layer hands it over.
#[derive(Debug)]
pub struct ApiRequest<'a> {
    /// The client's address (`aws:SourceIp`), when the listener knows it.
    pub peer: Option<std::net::IpAddr>,
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a http::HeaderMap,
    pub body: Bytes,
}

impl Gateway {
    /// A gateway that knows the ECS, ECR, ACM and ELBv2 models; services are attached with [`Self::serve`].
    pub fn new(config: GatewayConfig, verifier: Verifier) -> Self {
        let mut json = HashMap::new();
        for m in [model::ecs(), model::ecr(), model::acm(), model::agent()] {
            if let Some(prefix) = m.metadata.target_prefix.as_deref() {
                json.insert(prefix, (m, None));
            }
        }
        let mut query = HashMap::new();
        let elb = model::elbv2();
        query.insert(
            ("elasticloadbalancing", elb.metadata.api_version.as_str()),
            (elb, None),
        );
        for m in [model::iam(), model::sts()] {
            query.insert(
                (
                    m.metadata.endpoint_prefix.as_str(),
                    m.metadata.api_version.as_str(),
                ),
                (m, None),
            );
        }
        Self {
            config,
            verifier: Arc::new(verifier),
            authorizer: None,
            json,
            query,
        }
    }

    /// The verifier, shared with whoever issues run-time keys (IAM sets its key source on it).
    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }

    /// Puts policy evaluation between validation and every call.
    pub fn set_authorizer(&mut self, authorizer: Arc<dyn Authorizer>) {
        self.authorizer = Some(authorizer);
    }

    /// Attaches the implementation of one service (matched to its model).
    pub fn serve(&mut self, service: Arc<dyn Service>) {
        let m = service.model();
        if let Some(prefix) = m.metadata.target_prefix.as_deref() {
            self.json.insert(prefix, (m, Some(service)));
        } else if let Some(signing) = m.metadata.signing_name.as_deref() {
            self.query.insert(
                (signing, m.metadata.api_version.as_str()),
                (m, Some(service)),
            );
        } else {
            self.query.insert(
                (
                    m.metadata.endpoint_prefix.as_str(),
                    m.metadata.api_version.as_str(),
                ),
                (m, Some(service)),
            );
        }
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// Answers one AWS API request. Never panics on any input.
    pub async fn handle(&self, req: ApiRequest<'_>) -> Response<Bytes> {
        let request_id = uuid::Uuid::new_v4().to_string();
        if let Some(target) = req.headers.get("x-amz-target") {
            let out = self.handle_json(&req, target, &request_id).await;
            match out {
                Ok(body) => json_response(StatusCode::OK, body, &request_id),
                Err(e) => {
                    tracing::debug!(request_id, code = %e.code, message = %e.message, "json request failed");
                    json_response(e.status, Bytes::from(e.json_body()), &request_id)
                }
            }
        } else {
            let (out, ns) = self.handle_query(&req, &request_id).await;
            match out {
                Ok(body) => xml_response(StatusCode::OK, body, &request_id),
                Err(e) => {
                    tracing::debug!(request_id, code = %e.code, message = %e.message, "query request failed");
                    xml_response(
                        e.status,
                        Bytes::from(e.xml_body(ns, &request_id)),
                        &request_id,
                    )
                }
            }
        }
    }

    /// Refuses, from the request line and headers alone, a request that is not signed or names
    /// an access key this server does not know, so that its body is never read; `None` when the
    /// request may go on (its signature is checked in full once the body is in).
    pub fn precheck(
        &self,
        method: &str,
        path: &str,
        query: &str,
        headers: &http::HeaderMap,
    ) -> Option<Response<Bytes>> {
        let protocol = if headers.contains_key("x-amz-target") {
            Protocol::Json
        } else {
            Protocol::Query
        };
        let e = self
            .unsigned(method, path, query, headers, protocol)
            .err()?;
        Some(reject(headers, &e))
    }

    /// [`Self::precheck`] for Fleetport's own endpoints, whose errors are awsJson-shaped.
    pub fn precheck_own(
        &self,
        method: &str,
        path: &str,
        query: &str,
        headers: &http::HeaderMap,
    ) -> Result<(), AwsError> {
        self.unsigned(method, path, query, headers, Protocol::Json)
    }

    fn unsigned(
        &self,
        method: &str,
        path: &str,
        query: &str,
        headers: &http::HeaderMap,
        protocol: Protocol,
    ) -> Result<(), AwsError> {
        let signed = SignedRequest {
            method,
            path,
            query,
            headers,
            body: &[],
        };
        self.verifier
            .precheck(&signed)
            .map(|_| ())
            .map_err(|e| sig_error(e, protocol))
    }

    /// Checks the SigV4 signature of a request to one of Fleetport's own endpoints (which
    /// belong to no AWS service, so the scope may name any service, but must name this region).
    /// Returns the access key, or the error to answer in the awsJson shape.
    pub fn authenticate_own(
        &self,
        method: &str,
        path: &str,
        query: &str,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<String, AwsError> {
        let signed = SignedRequest {
            method,
            path,
            query,
            headers,
            body,
        };
        self.verify_in_region(&signed, Protocol::Json, JSON_SKEW_SECS, false)
            .map(|f| f.access_key)
    }

    /// Verifies a signature and that its scope names this region (any region for a global
    /// service: clients sign IAM and STS calls with their own region).
    fn verify_in_region(
        &self,
        signed: &SignedRequest<'_>,
        protocol: Protocol,
        skew: i64,
        global: bool,
    ) -> Result<crate::sigv4::SignatureFields, AwsError> {
        let fields = self
            .verifier
            .verify(
                signed,
                crate::clock::unix_secs(),
                skew,
                PayloadRule::BodyHash,
            )
            .map_err(|e| sig_error(e, protocol))?;
        if !global && !self.serves_region(&fields.region) {
            return Err(sig_error(
                SigError::Scope(format!(
                    "Credential should be scoped to a valid region, not '{}'. ",
                    fields.region
                )),
                protocol,
            ));
        }
        Ok(fields)
    }

    fn authenticate(
        &self,
        req: &ApiRequest<'_>,
        protocol: Protocol,
        signing_name: &str,
    ) -> Result<crate::sigv4::SignatureFields, AwsError> {
        let signed = SignedRequest {
            method: req.method,
            path: req.path,
            query: req.query,
            headers: req.headers,
            body: &req.body,
        };
        let skew = if protocol == Protocol::Json {
            JSON_SKEW_SECS
        } else {
            QUERY_SKEW_SECS
        };
        let global = matches!(signing_name, "iam" | "sts");
        let fields = self.verify_in_region(&signed, protocol, skew, global)?;
        if fields.service != signing_name {
            return Err(sig_error(
                SigError::Scope(format!(
                    "Credential should be scoped to correct service: '{signing_name}'. "
                )),
                protocol,
            ));
        }
        self.verifier
            .note_use(&fields.access_key, &fields.service, &fields.region);
        Ok(fields)
    }

    /// Whether a SigV4 scope's region is one this endpoint serves: the default region, and
    /// every name shaped like an AWS region (`us-east-1`, `eu-central-2`, `us-gov-west-1`), each
    /// with its own state. Malformed names are refused, so a typo does not quietly start an
    /// empty region.
    pub fn serves_region(&self, region: &str) -> bool {
        region == self.config.region || is_region_name(region)
    }

    /// The caller's tenant: the account its credentials belong to (a static key's configured
    /// account, a 12-digit key's own, an IAM key's issuer) and the region its scope names.
    fn context(&self, request_id: &str, access_key: String, region: &str) -> RequestContext {
        let principal = self
            .verifier
            .principal(&access_key, &self.config.account_id);
        RequestContext {
            request_id: request_id.to_string(),
            access_key,
            account_id: principal.account_id.clone(),
            region: region.to_string(),
            principal,
        }
    }

    /// The one authorisation path: the operation's IAM action on each resource the service
    /// names, evaluated for the caller (root passes). Denials come in the protocol's shape.
    fn authorize(
        &self,
        ctx: &RequestContext,
        service: &dyn Service,
        operation: &str,
        input: &Value,
        facts: &RequestFacts,
        protocol: Protocol,
    ) -> Result<(), AwsError> {
        if ctx.principal.is_root() {
            return Ok(());
        }
        let model = service.model();
        let prefix = model
            .metadata
            .signing_name
            .as_deref()
            .unwrap_or(&model.metadata.endpoint_prefix);
        // Anyone may ask who they are, even under an explicit deny.
        if prefix == "sts" && operation == "GetCallerIdentity" {
            return Ok(());
        }
        let action = format!("{prefix}:{operation}");
        let identity_tags = self
            .authorizer
            .as_ref()
            .is_some_and(|a| a.uses_resource_tags(&ctx.principal));
        let mut accesses: Vec<Access> = service
            .resources(ctx, operation, input)
            .into_iter()
            .map(|resource| {
                let resource_policy = service.resource_policy(&resource);
                let wants_tags = identity_tags
                    || resource_policy
                        .as_deref()
                        .is_some_and(|p| p.to_ascii_lowercase().contains("resourcetag"));
                let context = if resource == "*" || !wants_tags {
                    Vec::new()
                } else {
                    service
                        .resource_tags(&resource)
                        .into_iter()
                        .flat_map(|(k, v)| {
                            [
                                (format!("aws:resourcetag/{k}"), v.clone()),
                                (format!("{prefix}:resourcetag/{k}"), v),
                            ]
                        })
                        .collect()
                };
                Access {
                    action: action.clone(),
                    resource_policy,
                    resource,
                    context,
                }
            })
            .collect();
        accesses.extend(service.also_needs(ctx, operation, input));
        auth::check(self.authorizer.as_ref(), &ctx.principal, &accesses, facts).map_err(|message| {
            match protocol {
                Protocol::Json => auth::json_denial(message),
                Protocol::Query => auth::query_denial(message),
            }
        })
    }

    async fn handle_json(
        &self,
        req: &ApiRequest<'_>,
        target: &HeaderValue,
        request_id: &str,
    ) -> Result<Bytes, AwsError> {
        let unknown = || AwsError::client("UnknownOperationException", "");
        let target = target.to_str().map_err(|_| unknown())?;
        let (prefix, operation) = target.rsplit_once('.').ok_or_else(unknown)?;
        let (model, service) = self.json.get(prefix).ok_or_else(unknown)?;
        let signing = model
            .metadata
            .signing_name
            .as_deref()
            .unwrap_or(&model.metadata.endpoint_prefix);
        let fields = self.authenticate(req, Protocol::Json, signing)?;
        if req.method != "POST" {
            return Err(AwsError::client(
                "UnknownOperationException",
                "awsJson requests must use POST.",
            ));
        }
        let op = model.operation(operation).ok_or_else(unknown)?;
        let Some(service) = service.as_ref().filter(|s| s.implements(operation)) else {
            return Err(not_implemented(model, operation, Protocol::Json));
        };
        let input = parse_json_body(&req.body)?;
        if let Some(input_ref) = &op.input {
            validate::validate(model, &input_ref.shape, &input)
                .map_err(|e| e.into_error(service.constraint_error_code()))?;
        }
        let ctx = self.context(request_id, fields.access_key, &fields.region);
        self.authorize(
            &ctx,
            service.as_ref(),
            &op.name,
            &input,
            &facts(
                &fields.region,
                req.peer,
                self.verifier.token_issued_at(&ctx.access_key),
            ),
            Protocol::Json,
        )?;
        let output = service.call(&ctx, &op.name, input).await?;
        serde_json::to_vec(&output)
            .map(Bytes::from)
            .map_err(|_| AwsError::internal())
    }

    async fn handle_query(
        &self,
        req: &ApiRequest<'_>,
        request_id: &str,
    ) -> (Result<Bytes, AwsError>, &'static str) {
        let form_body = req
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.to_ascii_lowercase()
                    .starts_with("application/x-www-form-urlencoded")
            });
        let mut params = query::parse_form(req.query.as_bytes());
        if req.method == "POST" && form_body {
            params.extend(query::parse_form(&req.body));
        }
        let version = params.get("Version").cloned().unwrap_or_default();
        // The signing scope names the service; Version picks the API (ELBv2 and Classic ELB share a scope).
        let scope_service = scope_service(req).unwrap_or_default();
        let entry = self
            .query
            .iter()
            .find(|((svc, ver), _)| *svc == scope_service && *ver == version)
            .map(|(_, v)| v);
        let default_ns = model::elbv2()
            .metadata
            .xml_namespace
            .as_deref()
            .unwrap_or_default();
        let ns = entry
            .and_then(|(m, _)| m.metadata.xml_namespace.as_deref())
            .unwrap_or(default_ns);
        let out = async {
            let signing = entry.map_or(scope_service.as_str(), |(m, _)| {
                m.metadata.signing_name.as_deref().unwrap_or(&m.metadata.endpoint_prefix)
            });
            let fields = self.authenticate(req, Protocol::Query, signing)?;
            let Some(action) = params.get("Action").cloned() else {
                return Err(AwsError::client("MissingAction", "The request must contain the parameter Action."));
            };
            let Some((model, service)) = entry else {
                if version.is_empty() {
                    return Err(AwsError::client("MissingParameter", "The request must contain the parameter Version."));
                }
                return Err(AwsError::client(
                    "InvalidAction",
                    format!("The action {action} is not valid for this web service (API version '{version}' is not served by Fleetport)."),
                ));
            };
            let Some(op) = model.operation(&action) else {
                return Err(AwsError::client("InvalidAction", format!("The action {action} is not valid for this web service.")));
            };
            let Some(service) = service.as_ref().filter(|s| s.implements(&action)) else {
                return Err(not_implemented(model, &action, Protocol::Query));
            };
            let code = service.constraint_error_code();
            let input = match &op.input {
                Some(r) => {
                    let v = query::decode(model, &r.shape, &params).map_err(|e| query_invalid(e, code))?;
                    validate::validate(model, &r.shape, &v).map_err(|e| query_invalid(e, code))?;
                    v
                }
                None => Value::Object(Default::default()),
            };
            let ctx = self.context(request_id, fields.access_key, &fields.region);
            self.authorize(&ctx, service.as_ref(), &op.name, &input, &facts(&fields.region, req.peer, self.verifier.token_issued_at(&ctx.access_key)), Protocol::Query)?;
            let output = service.call(&ctx, &op.name, input).await?;
            Ok(Bytes::from(query::write_response(model, &op.name, &output, request_id)))
        }
        .await;
        (out, ns)
    }
}

/// `<area>-<words>-<number>` in lowercase, as every AWS region is named.
pub fn is_region_name(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    region.len() <= 32
        && parts.len() >= 3
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts
            .last()
            .is_some_and(|n| !n.is_empty() && n.len() <= 2 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// What conditions may test about a request: the region it was signed for, the client's
/// address; Fleetport's API is plain HTTP, so `aws:SecureTransport` is false.
fn facts(region: &str, peer: Option<std::net::IpAddr>, issued: Option<i64>) -> RequestFacts {
    RequestFacts {
        region: region.to_string(),
        source_ip: peer,
        secure_transport: false,
        token_issued_at: issued,
    }
}

fn query_invalid(e: Invalid, code: &str) -> AwsError {
    let (Invalid::Serialization(m) | Invalid::Constraint(m)) = e;
    AwsError::client(code, m)
}

fn scope_service(req: &ApiRequest<'_>) -> Option<String> {
    let signed = SignedRequest {
        method: req.method,
        path: req.path,
        query: req.query,
        headers: req.headers,
        body: &[],
    };
    crate::sigv4::extract(&signed).ok().map(|f| f.service)
}

fn not_implemented(model: &ServiceModel, operation: &str, protocol: Protocol) -> AwsError {
    let service = match model.metadata.endpoint_prefix.as_str() {
        "ecs" => "Amazon ECS",
        "api.ecr" => "Amazon ECR",
        _ => "Elastic Load Balancing",
    };
    let message = format!("Fleetport does not implement the {service} operation {operation} yet.");
    match protocol {
        Protocol::Json => AwsError::client("UnknownOperationException", message),
        Protocol::Query => AwsError::client("InvalidAction", message),
    }
}

fn parse_json_body(body: &[u8]) -> Result<Value, AwsError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(Value::Null) => Ok(Value::Object(Default::default())),
        Ok(_) => Err(AwsError::serialization(
            "Start of structure or map expected.",
        )),
        Err(e) => Err(AwsError::serialization(format!(
            "Malformed JSON request body: {e}"
        ))),
    }
}

fn sig_error(e: SigError, protocol: Protocol) -> AwsError {
    const MISMATCH: &str = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";
    const BAD_TOKEN: &str = "The security token included in the request is invalid.";
    let forbidden = StatusCode::FORBIDDEN;
    const EXPIRED: &str = "The security token included in the request is expired";
    match (protocol, e) {
        (Protocol::Json, SigError::ExpiredToken) => {
            AwsError::client("ExpiredTokenException", EXPIRED)
        }
        (Protocol::Query, SigError::ExpiredToken) => {
            AwsError::with_status("ExpiredToken", EXPIRED, forbidden)
        }
        (Protocol::Json, SigError::Missing) => AwsError::client(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ),
        (Protocol::Json, SigError::Incomplete(m)) => {
            AwsError::client("IncompleteSignatureException", m)
        }
        (Protocol::Json, SigError::UnknownAccessKey) => {
            AwsError::client("UnrecognizedClientException", BAD_TOKEN)
        }
        (Protocol::Json, SigError::Mismatch) => {
            AwsError::client("InvalidSignatureException", MISMATCH)
        }
        (Protocol::Json, SigError::Scope(m)) => AwsError::client("InvalidSignatureException", m),
        (Protocol::Json, SigError::Expired(m)) => AwsError::client(
            "InvalidSignatureException",
            format!("Signature expired: {m}"),
        ),
        (Protocol::Json, SigError::UnsignedPayload(m)) => {
            AwsError::client("InvalidSignatureException", m)
        }
        (Protocol::Query, SigError::UnsignedPayload(m)) => {
            AwsError::with_status("SignatureDoesNotMatch", m, forbidden)
        }
        (Protocol::Json, SigError::NotYetCurrent(m)) => AwsError::client(
            "InvalidSignatureException",
            format!("Signature not yet current: {m}"),
        ),
        (Protocol::Query, SigError::Missing) => AwsError::with_status(
            "MissingAuthenticationToken",
            "Request is missing Authentication Token",
            forbidden,
        ),
        (Protocol::Query, SigError::Incomplete(m)) => AwsError::client("IncompleteSignature", m),
        (Protocol::Query, SigError::UnknownAccessKey) => {
            AwsError::with_status("InvalidClientTokenId", BAD_TOKEN, forbidden)
        }
        (Protocol::Query, SigError::Mismatch) => {
            AwsError::with_status("SignatureDoesNotMatch", MISMATCH, forbidden)
        }
        (Protocol::Query, SigError::Scope(m)) => {
            AwsError::with_status("SignatureDoesNotMatch", m, forbidden)
        }
        (Protocol::Query, SigError::Expired(m)) => AwsError::with_status(
            "SignatureDoesNotMatch",
            format!("Signature expired: {m}"),
            forbidden,
        ),
        (Protocol::Query, SigError::NotYetCurrent(m)) => AwsError::with_status(
            "SignatureDoesNotMatch",
            format!("Signature not yet current: {m}"),
            forbidden,
        ),
    }
}

fn with_headers(
    mut resp: Response<Bytes>,
    content_type: &'static str,
    request_id: &str,
) -> Response<Bytes> {
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-amzn-requestid", v);
    }
    resp
}

fn json_response(status: StatusCode, body: Bytes, request_id: &str) -> Response<Bytes> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    with_headers(resp, "application/x-amz-json-1.1", request_id)
}

fn xml_response(status: StatusCode, body: Bytes, request_id: &str) -> Response<Bytes> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    with_headers(resp, "text/xml", request_id)
}

/// An AWS-shaped error for a request rejected before it reached the gateway (e.g. body too
/// large), in the protocol its headers announce.
pub fn reject(headers: &http::HeaderMap, error: &AwsError) -> Response<Bytes> {
    let request_id = uuid::Uuid::new_v4().to_string();
    if headers.contains_key("x-amz-target") {
        json_response(error.status, Bytes::from(error.json_body()), &request_id)
    } else {
        let ns = model::elbv2()
            .metadata
            .xml_namespace
            .as_deref()
            .unwrap_or_default();
        xml_response(
            error.status,
            Bytes::from(error.xml_body(ns, &request_id)),
            &request_id,
        )
    }
}
