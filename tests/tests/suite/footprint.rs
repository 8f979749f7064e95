//! What each request in flight costs a replica. Spin keeps up to 2 MiB of
//! every freed instance's linear memories resident for the next instance
//! (the harness does the same: runtime.rs), so a component's memory size is
//! paid once per request in flight; a query is three components (query,
//! rate-limiter, metrics), each with its own memory. Rust's default 1 MiB
//! shadow stack was most of it: `.cargo/config.toml` sets 128 KiB.

use chatbot_harness::project_root;

/// Each core module's initial linear memory, in bytes, in a built component.
fn initial_memories(file: &str) -> Vec<u64> {
    let path = project_root()
        .join("target/wasm32-wasip2/release")
        .join(file);
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{} (build the components first): {e}", path.display()));
    let mut sizes = Vec::new();
    for payload in wasmtime::wasmparser::Parser::new(0).parse_all(&bytes) {
        if let wasmtime::wasmparser::Payload::MemorySection(memories) = payload.unwrap() {
            for memory in memories {
                sizes.push(memory.unwrap().initial * 65_536);
            }
        }
    }
    sizes
}

#[test]
fn every_components_memory_starts_well_under_a_default_stack() {
    for file in [
        "query.wasm",
        "rate_limiter.wasm",
        "metrics.wasm",
        "ops.wasm",
    ] {
        let sizes = initial_memories(file);
        assert!(!sizes.is_empty(), "{file} defines no memory");
        // A 1 MiB stack alone would exceed this; stack + data + heap start fit under it.
        let largest = *sizes.iter().max().unwrap();
        assert!(
            largest <= 768 << 10,
            "{file} starts with {largest} bytes of linear memory: is .cargo/config.toml's stack size in effect?"
        );
    }
}
