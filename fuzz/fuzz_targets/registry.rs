//! The registry under `/v2/`: paths, query strings, headers, upload sessions and manifests,
//! through the real handler over a real SQLite store in a temporary directory. Input: a method
//! line, a request-target line, header lines, a blank line, the body. Requests carry a valid
//! registry password unless the input brings its own Authorization header; a repository `app`
//! exists with one pushed image, so manifests can name known blobs.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use base64::Engine;
use fleetport_ecr::Ecr;
use libfuzzer_sys::fuzz_target;

struct Harness {
    rt: tokio::runtime::Runtime,
    ecr: Ecr,
    auth: String,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fleetport-fuzz-registry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        fleetport_store::datadir::prepare(&dir).expect("data dir");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let store = Arc::new(fleetport_store::sqlite::SqliteStore::open(&dir).expect("store"));
        let ecr = Ecr::open(
            store,
            &dir,
            "us-east-1",
            "000000000000",
            "localhost:4566",
            std::time::Duration::from_secs(60),
            None,
        )
        .expect("registry");
        let key = fleetport_store::datadir::key(&dir, "registry-token.key").expect("token key");
        let password = fleetport_ecr::token::TokenKey::new(key).issue(
            "000000000000",
            "us-east-1",
            4_000_000_000,
            None,
        );
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("AWS:{password}"))
        );
        let h = Harness { rt, ecr, auth };
        // A repository with an image in it.
        let ctx = fleetport_proto::RequestContext {
            request_id: "fuzz".into(),
            access_key: "test".into(),
            account_id: "000000000000".into(),
            region: "us-east-1".into(),
            principal: fleetport_proto::auth::Principal::root("000000000000"),
        };
        let created = h.rt.block_on(fleetport_proto::Service::call(
            &h.ecr,
            &ctx,
            "CreateRepository",
            serde_json::json!({"repositoryName": "app"}),
        ));
        assert!(created.is_ok(), "the seed repository");
        let layer = b"layer";
        let config = b"{}";
        for blob in [&layer[..], &config[..]] {
            let digest = fleetport_ecr::blobs::digest_of(blob);
            h.send("POST", &format!("/v2/app/blobs/uploads/?digest={digest}"), &[], blob);
        }
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":5}}]}}"#,
            fleetport_ecr::blobs::digest_of(config),
            fleetport_ecr::blobs::digest_of(layer)
        );
        h.send(
            "PUT",
            "/v2/app/manifests/v1",
            &[("content-type", "application/vnd.oci.image.manifest.v1+json")],
            manifest.as_bytes(),
        );
        h
    })
}

impl Harness {
    fn send(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Option<u16> {
        let mut req = http::Request::builder().method(method).uri(target);
        let mut has_auth = false;
        for (name, value) in headers {
            has_auth |= name.eq_ignore_ascii_case("authorization");
            req = req.header(*name, *value);
        }
        if !has_auth {
            req = req.header("authorization", &self.auth);
        }
        let req = req.body(Body::from(body.to_vec())).ok()?;
        self.rt.block_on(async {
            let resp = self.ecr.registry(req).await;
            let status = resp.status().as_u16();
            // Read what the handler streams back, bounded.
            let _ = axum::body::to_bytes(resp.into_body(), 1 << 20).await;
            Some(status)
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let method = lines.next().unwrap_or_default();
    let target = lines.next().unwrap_or_default();
    let mut headers = Vec::new();
    for line in lines.by_ref() {
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim(), value.trim()));
        }
    }
    let body = lines.collect::<Vec<_>>().join("\n");
    if http::Method::from_bytes(method.as_bytes()).is_err() || !target.starts_with("/v2/") {
        return;
    }
    let valid: Vec<(&str, &str)> = headers
        .into_iter()
        .filter(|(n, v)| {
            http::HeaderName::from_bytes(n.as_bytes()).is_ok()
                && http::HeaderValue::from_str(v).is_ok()
        })
        .collect();
    let _ = harness().send(method, target, &valid, body.as_bytes());
});
