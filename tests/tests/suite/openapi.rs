//! `deploy/openapi.yaml` must describe every route the components serve: the
//! route table in `chatbot_core::http::routes` that the components' routers are
//! built from, method by method.

use std::collections::{BTreeMap, BTreeSet};

use chatbot_harness::{admin_authorization, project_root, TestApp};
use yaml_rust2::YamlLoader;

/// Each documented path with its methods (lowercase, as OpenAPI writes them).
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(project_root().join("deploy/openapi.yaml")).unwrap();
    let docs = YamlLoader::load_from_str(&text).expect("openapi.yaml is YAML");
    let paths = docs[0]["paths"].as_hash().expect("a `paths` map");
    paths
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_hash()
                .expect("a path item")
                .keys()
                .filter_map(|k| k.as_str())
                .filter(|k| ["get", "post", "put", "delete", "patch"].contains(k))
                .map(str::to_string)
                .collect();
            (path.as_str().expect("a path").to_string(), methods)
        })
        .collect()
}

fn documented_paths() -> BTreeSet<String> {
    documented().into_keys().collect()
}

#[test]
fn every_route_in_the_table_is_documented_with_its_method() {
    let documented = documented();
    let routes: Vec<_> = chatbot_core::http::routes::all().collect();
    assert!(routes.len() >= 13, "found only {routes:?}");
    let missing: Vec<String> = routes
        .iter()
        .filter(|r| {
            !documented
                .get(&r.openapi_path())
                .is_some_and(|methods| methods.contains(&r.method.as_str().to_ascii_lowercase()))
        })
        .map(|r| format!("{} {}", r.method, r.openapi_path()))
        .collect();
    assert!(
        missing.is_empty(),
        "routes served but not in deploy/openapi.yaml: {missing:?}"
    );
    let served: BTreeSet<String> = routes.iter().map(|r| r.openapi_path()).collect();
    let extra: Vec<_> = documented.keys().filter(|p| !served.contains(*p)).collect();
    assert!(extra.is_empty(), "documented but not served: {extra:?}");
}

#[tokio::test]
async fn every_documented_route_is_served() {
    let app = TestApp::spawn().await.unwrap();
    let mut client = app.client();
    for path in documented_paths() {
        let concrete = path.replace("{session_id}", "some-session");
        for method in ["GET", "POST"] {
            let response = client.request(method, &concrete, &[], "").await.unwrap();
            // The host's own 404 (no route) is plain text; a component always answers JSON or metrics.
            let from_a_component = response.header("content-type").is_some();
            assert!(
                from_a_component,
                "{method} {concrete}: {} {}",
                response.status,
                response.text()
            );
        }
    }
}

/// The methods a documented path answers, as `Allow` lists them: the
/// document's, and `HEAD` wherever `GET` is.
fn allowed(documented: &BTreeSet<String>) -> BTreeSet<String> {
    let mut allowed: BTreeSet<String> = documented.iter().map(|m| m.to_uppercase()).collect();
    if allowed.contains("GET") {
        allowed.insert("HEAD".to_string());
    }
    allowed
}

#[tokio::test]
async fn every_other_method_is_a_405_with_allow() {
    let app = TestApp::spawn().await.unwrap();
    let mut client = app.client();
    let auth = admin_authorization();
    let mut checked = 0;
    for (path, methods) in documented() {
        let concrete = path.replace("{session_id}", "some-session");
        let allowed = allowed(&methods);
        let probes = [
            "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "QUERY",
        ];
        for method in probes.iter().filter(|m| !allowed.contains(**m)) {
            let response = client
                .request(method, &concrete, &[("authorization", &auth)], "")
                .await
                .unwrap();
            assert_eq!(response.status, 405, "{method} {concrete}");
            let listed: BTreeSet<String> = response
                .header("allow")
                .unwrap_or_else(|| panic!("{method} {concrete}: a 405 without Allow"))
                .split(',')
                .map(|m| m.trim().to_string())
                .collect();
            assert_eq!(listed, allowed, "{method} {concrete}");
            if *method != "HEAD" {
                assert_eq!(response.json()["status"], "method_not_allowed");
            }
            checked += 1;
        }
    }
    assert!(checked > 13 * 6, "only {checked} probes");
}

/// Headers that differ between any two responses, whatever the method.
const PER_RESPONSE: [&str; 5] = [
    "x-request-id",
    "x-response-time",
    "date",
    "content-length",
    "transfer-encoding",
];

#[tokio::test]
async fn head_answers_wherever_get_does_with_the_same_headers_and_no_body() {
    let app = TestApp::spawn().await.unwrap();
    let mut client = app.client();
    let auth = admin_authorization();
    let gets: Vec<String> = documented()
        .into_iter()
        .filter(|(_, methods)| methods.contains("get"))
        .map(|(path, _)| path.replace("{session_id}", "some-session"))
        .collect();
    assert!(gets.len() >= 8, "{gets:?}");
    for path in gets {
        for authorization in [Some(auth.as_str()), None] {
            let headers: Vec<(&str, &str)> = authorization
                .map(|a| vec![("authorization", a)])
                .unwrap_or_default();
            let get = client.request("GET", &path, &headers, "").await.unwrap();
            let head = client.request("HEAD", &path, &headers, "").await.unwrap();
            let context = format!("{path} (admin token: {})", authorization.is_some());
            assert_eq!(head.status, get.status, "{context}");
            assert!(head.body.is_empty(), "{context}: {}", head.text());
            let names = |r: &chatbot_harness::BufferedResponse| -> BTreeMap<String, String> {
                r.headers
                    .iter()
                    .filter(|(name, _)| !PER_RESPONSE.contains(&name.as_str()))
                    .map(|(name, value)| {
                        (
                            name.to_string(),
                            value.to_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            };
            assert_eq!(names(&head), names(&get), "{context}");
            assert!(head.header("x-request-id").is_some(), "{context}");
        }
    }
}
