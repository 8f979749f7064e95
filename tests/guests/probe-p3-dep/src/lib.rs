//! The WASIp3 probe's dependency: exports `harness:counter/counter`, whose
//! async functions the probe awaits across the component boundary, on a
//! connection the probe lends or on one this component keeps per instance.

use std::cell::RefCell;
use std::rc::Rc;

use spin_sdk::redis::wit::redis::{Connection, Error, RedisParameter, RedisResult};

spin_sdk::wit_bindgen::generate!({
    runtime_path: "spin_sdk::wit_bindgen::rt",
    path: ["../../../wit/deps/spin-sdk-6", "../probe-p3/wit/counter.wit"],
    world: "harness:counter/provider",
    with: {
        "spin:redis/redis@3.0.0": spin_sdk::redis::wit::redis,
    },
});

use exports::harness::counter::counter::{Counted, Guest};

thread_local! {
    /// This instance's name, random per instance.
    static INSTANCE: u64 = {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u8(1);
        hasher.finish()
    };
    /// The connection this instance keeps, opened by the first `incr-kept`.
    static KEPT: RefCell<Option<Rc<Connection>>> = const { RefCell::new(None) };
}

fn instance() -> u64 {
    INSTANCE.with(|i| *i)
}

fn describe(e: Error) -> String {
    format!("{e:?}")
}

async fn incr(conn: &Connection, key: String) -> Result<Counted, Error> {
    let reply = conn
        .execute(
            "INCR".into(),
            vec![RedisParameter::Binary(key.into_bytes())],
        )
        .await?;
    match reply.as_slice() {
        [RedisResult::Int64(value)] => Ok(Counted {
            value: *value,
            instance: instance(),
        }),
        other => Err(Error::Other(format!("INCR answered {other:?}"))),
    }
}

struct Provider;

impl Guest for Provider {
    async fn incr_lent(conn: &Connection, key: String) -> Result<Counted, String> {
        incr(conn, key).await.map_err(describe)
    }

    async fn incr_kept(address: String, key: String) -> Result<Counted, String> {
        let kept = KEPT.with(|k| k.borrow().clone());
        let conn = match kept {
            Some(conn) => conn,
            None => {
                let conn = Rc::new(Connection::open(address).await.map_err(describe)?);
                KEPT.with(|k| *k.borrow_mut() = Some(conn.clone()));
                conn
            }
        };
        let counted = incr(&conn, key).await;
        if counted.is_err() {
            KEPT.with(|k| k.borrow_mut().take());
        }
        counted.map_err(describe)
    }
}

export!(Provider);
