//! Host-side bindings for the Spin interfaces the components import, generated
//! from the spin-sdk crate's own WIT (copied to `wit/deps/spin-sdk` by `build.rs`)
//! and from the project's WIT.

wasmtime::component::bindgen!({
    path: ["../wit/deps/spin-sdk"],
    inline: r#"
        package chatbot:harness;

        /// What a Spin 3.x/4.x host offers the chatbot's components, beyond WASI and wasi:http.
        world spin-host {
            import fermyon:spin/redis@2.0.0;
            import fermyon:spin/variables@2.0.0;
            import spin:postgres/postgres@4.0.0;
        }
    "#,
    world: "chatbot:harness/spin-host",
    imports: {
        // Trappable so the harness can fail a guest louder than Spin would (see postgres.rs).
        "spin:postgres/postgres.[method]connection.query": async | trappable,
        // Trappable so an open that Spin would wait on forever fails instead (see host/mod.rs).
        "spin:postgres/postgres.[static]connection.open": async | trappable,
        "fermyon:spin/redis.[static]connection.open": async | trappable,
        default: async,
    },
    with: {
        "fermyon:spin/redis.connection": crate::host::redis::RedisConnection,
        "spin:postgres/postgres.connection": crate::host::postgres::PgConnection,
    },
});

/// The project's own interfaces, for host-side stand-ins of the limiter and recorder.
pub mod chatbot {
    wasmtime::component::bindgen!({
        path: ["../wit/ratelimit.wit", "../wit/metrics.wit"],
        inline: r#"
            package chatbot:harness;
            world chatbot-imports {
                import chatbot:ratelimit/limiter@0.2.0;
                import chatbot:metrics/recorder@0.2.0;
            }
        "#,
        world: "chatbot:harness/chatbot-imports",
        imports: { default: async | trappable },
        additional_derives: [PartialEq],
    });
}

/// The rate-limiter component's world, to call its export from the host.
pub mod rate_limiter {
    wasmtime::component::bindgen!({
        path: ["../wit/ratelimit.wit"],
        world: "chatbot:ratelimit/rate-limiter",
        exports: { default: async },
        additional_derives: [PartialEq],
    });
}

/// The metrics component's world, to call its recorder export from the host.
pub mod metrics {
    wasmtime::component::bindgen!({
        path: ["../wit/metrics.wit"],
        world: "chatbot:metrics/metrics",
        exports: { default: async },
    });
}

/// What a Spin 4.x host offers a spin-sdk 6 (WASIp3) component beyond WASI
/// and wasi:http: the async Redis, Postgres and variables interfaces.
pub mod spin4 {
    wasmtime::component::bindgen!({
        path: ["../wit/deps/spin-sdk-6"],
        inline: r#"
            package chatbot:harness-p3;

            world spin4-host {
                import spin:redis/redis@3.0.0;
                import spin:variables/variables@3.0.0;
                import spin:postgres/postgres@4.2.0;
            }
        "#,
        world: "chatbot:harness-p3/spin4-host",
        imports: { default: async | trappable },
        with: {
            "spin:redis/redis.connection": crate::host::redis3::RedisConnection3,
            "spin:postgres/postgres.connection": crate::host::postgres42::PgConnection42,
            "spin:postgres/postgres.connection-builder": crate::host::postgres42::PgConnectionBuilder,
        },
    });
}
