//! Each built component imports only what a Spin 4.0.x host provides (and
//! the query handler, additionally, the two interfaces spin.toml composes in).

use chatbot_harness::{project_root, runtime};

/// Interfaces a Spin 4.0.x host provides to a spin-sdk 6.0 guest: WASI 0.2,
/// the WASI 0.3 release candidate Spin 4.0 runs (`0.3.0-rc-2026-03-15`; not
/// the final 0.3.0, which Spin 4.0 does not), and Spin's async interfaces.
fn provided_by_spin(name: &str) -> bool {
    let (package, version) = name.split_once('@').unwrap_or((name, ""));
    let wasi = (version.starts_with("0.2.") || version == "0.3.0-rc-2026-03-15")
        && [
            "wasi:cli/",
            "wasi:io/",
            "wasi:clocks/",
            "wasi:random/",
            "wasi:filesystem/",
            "wasi:sockets/",
            "wasi:http/",
        ]
        .iter()
        .any(|p| package.starts_with(p));
    let spin = (package == "spin:redis/redis" && version == "3.0.0")
        || (package == "spin:postgres/postgres" && version == "4.2.0")
        || (package == "spin:variables/variables" && version == "3.0.0");
    wasi || spin
}

fn imports(file: &str) -> Vec<String> {
    let path = project_root()
        .join("target/wasm32-wasip2/release")
        .join(file);
    // The apps' compilation, when they load the same bytes.
    let bytes = std::fs::read(&path).expect("build the components first");
    let component = runtime::compile(&bytes).unwrap();
    component
        .component_type()
        .imports(runtime::engine())
        .map(|(name, _)| name.to_string())
        .collect()
}

#[test]
fn every_component_imports_only_what_spin_provides() {
    for file in ["ops.wasm", "metrics.wasm", "rate_limiter.wasm"] {
        let names = imports(file);
        assert!(!names.is_empty());
        let foreign: Vec<_> = names.iter().filter(|n| !provided_by_spin(n)).collect();
        assert!(foreign.is_empty(), "{file} imports {foreign:?}");
    }
    let query = imports("query.wasm");
    let foreign: Vec<_> = query.iter().filter(|n| !provided_by_spin(n)).collect();
    assert_eq!(
        foreign,
        [
            "chatbot:ratelimit/limiter@0.2.0",
            "chatbot:metrics/recorder@0.2.0"
        ],
        "the query handler's other imports are the ones spin.toml satisfies"
    );
    // It uses Spin 4's async Redis, Postgres and variables, and none of the
    // synchronous ones (whose calls a guest cannot bound).
    for needed in [
        "spin:redis/redis@3.0.0",
        "spin:postgres/postgres@4.2.0",
        "spin:variables/variables@3.0.0",
        "wasi:http/client@0.3.0-rc-2026-03-15",
    ] {
        assert!(
            query.iter().any(|n| n == needed),
            "query does not import {needed}: {query:?}"
        );
    }
    for file in [
        "query.wasm",
        "ops.wasm",
        "metrics.wasm",
        "rate_limiter.wasm",
    ] {
        let names = imports(file);
        let synchronous: Vec<_> = names
            .iter()
            .filter(|n| n.starts_with("fermyon:spin/") || n.ends_with("postgres@4.0.0"))
            .collect();
        assert!(synchronous.is_empty(), "{file} imports {synchronous:?}");
    }
}

#[test]
fn the_manifest_composes_every_dependency_the_query_handler_imports() {
    let manifest =
        chatbot_harness::manifest::Manifest::load(&project_root().join("spin.toml")).unwrap();
    let declared: Vec<&String> = manifest.component["query"].dependencies.keys().collect();
    assert_eq!(
        declared,
        [
            "chatbot:metrics/recorder@0.2.0",
            "chatbot:ratelimit/limiter@0.2.0"
        ]
    );
    assert!(manifest.component["query"].dependencies_inherit_configuration);
}
