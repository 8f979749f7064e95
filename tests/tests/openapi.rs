//! `deploy/openapi.yaml` must describe every route the components serve: the
//! route table in `chatbot_core::routes` that the components' routers are
//! built from, method by method.

use std::collections::{BTreeMap, BTreeSet};

use chatbot_harness::{project_root, TestApp};
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
    let routes: Vec<_> = chatbot_core::routes::all().collect();
    assert!(routes.len() >= 13, "found only {routes:?}");
    let missing: Vec<String> = routes
        .iter()
        .filter(|r| {
            !documented
                .get(&r.openapi_path())
                .is_some_and(|methods| methods.contains(&r.method.to_ascii_lowercase()))
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
