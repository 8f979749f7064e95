//! Runs one of the core's typed scripts (`chatbot_core::redis::script`)
//! against a real Redis, as `chatbot_spin::redis_script::run` does in a
//! component: its keys and arguments in, its reply read by its own parser.

use chatbot_core::redis::script::{Arg, Script, Value};

fn value(reply: redis::Value) -> Value {
    match reply {
        redis::Value::Nil => Value::Nil,
        redis::Value::Int(int) => Value::Int(int),
        redis::Value::BulkString(bytes) => Value::Bytes(bytes),
        redis::Value::SimpleString(status) => Value::Status(status),
        redis::Value::Okay => Value::Status("OK".into()),
        other => Value::Status(format!("{other:?}")),
    }
}

/// `EVAL`s `script` and parses its reply (a Lua table is a list of values).
pub async fn run<S: Script>(
    redis: &mut redis::aio::MultiplexedConnection,
    script: &S,
) -> anyhow::Result<S::Reply> {
    let keys = script.keys();
    let mut command = redis::cmd("EVAL");
    command.arg(S::SOURCE).arg(keys.len()).arg(&keys);
    for arg in script.args() {
        match arg {
            Arg::Int(int) => command.arg(int),
            Arg::Bytes(bytes) => command.arg(bytes),
        };
    }
    let reply: redis::Value = command.query_async(redis).await?;
    let values = match reply {
        redis::Value::Array(values) => values.into_iter().map(value).collect(),
        single => vec![value(single)],
    };
    Ok(script.parse(values))
}
