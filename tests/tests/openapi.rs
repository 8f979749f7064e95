//! `deploy/openapi.yaml` must describe every route the components serve.

use std::collections::BTreeSet;

use chatbot_harness::{project_root, TestApp};

fn documented_paths() -> BTreeSet<String> {
    let text = std::fs::read_to_string(project_root().join("deploy/openapi.yaml")).unwrap();
    let mut in_paths = false;
    let mut paths = BTreeSet::new();
    for line in text.lines() {
        if line == "paths:" {
            in_paths = true;
        } else if !line.starts_with(' ') && !line.is_empty() {
            in_paths = false;
        } else if in_paths
            && line.starts_with("  /")
            && line.ends_with(':')
            && !line.starts_with("   ")
        {
            paths.insert(line.trim().trim_end_matches(':').to_string());
        }
    }
    paths
}

/// Route literals in the components' source: every string that starts like a route.
fn routes_in_code() -> BTreeSet<String> {
    let mut routes = BTreeSet::new();
    for component in ["query", "ops", "metrics"] {
        let dir = project_root()
            .join("components")
            .join(component)
            .join("src");
        for entry in std::fs::read_dir(dir).unwrap() {
            let source = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for literal in source.split('"').skip(1).step_by(2) {
                let is_route = ["/api/v1/", "/health", "/admin/", "/metrics"]
                    .iter()
                    .any(|p| literal.starts_with(p))
                    && !literal.contains(' ')
                    && !literal.contains('{');
                if is_route {
                    // A prefix route takes its parameter from the path.
                    let route = if literal.ends_with('/') {
                        format!("{literal}{{session_id}}")
                    } else {
                        literal.to_string()
                    };
                    routes.insert(route);
                }
            }
        }
    }
    routes
}

#[test]
fn every_route_in_the_code_is_documented() {
    let documented = documented_paths();
    let in_code = routes_in_code();
    assert!(in_code.len() >= 13, "found only {in_code:?}");
    let missing: Vec<_> = in_code.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes served but not in deploy/openapi.yaml: {missing:?}"
    );
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
