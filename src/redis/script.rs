//! The one protocol every Lua script follows: a type that holds a call's
//! inputs and knows its script's source, the keys and arguments it sends
//! (in the order the Lua reads them) and how to read the reply. The Spin side
//! only runs it (`chatbot_spin::redis_script::run`); everything a script's
//! caller and its Lua must agree on is here, next to the Lua, and tested natively.

/// One argument of a script call (`ARGV[i]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Int(i64),
    Bytes(Vec<u8>),
}

impl Arg {
    /// Any bytes (a key, a token, JSON).
    pub fn bytes(value: impl AsRef<[u8]>) -> Self {
        Self::Bytes(value.as_ref().to_vec())
    }
}

impl From<i64> for Arg {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}

impl From<u64> for Arg {
    /// Counts and durations; Redis integers are signed 64-bit.
    fn from(value: u64) -> Self {
        Self::Int(i64::try_from(value).unwrap_or(i64::MAX))
    }
}

impl From<u32> for Arg {
    fn from(value: u32) -> Self {
        Self::Int(i64::from(value))
    }
}

impl From<&str> for Arg {
    fn from(value: &str) -> Self {
        Self::Bytes(value.as_bytes().to_vec())
    }
}

impl From<String> for Arg {
    fn from(value: String) -> Self {
        Self::Bytes(value.into_bytes())
    }
}

impl From<&String> for Arg {
    fn from(value: &String) -> Self {
        Self::Bytes(value.as_bytes().to_vec())
    }
}

impl From<Vec<u8>> for Arg {
    fn from(value: Vec<u8>) -> Self {
        Self::Bytes(value)
    }
}

impl From<&[u8]> for Arg {
    fn from(value: &[u8]) -> Self {
        Self::Bytes(value.to_vec())
    }
}

/// One value of a script's reply (a Lua table becomes a list of these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Nil,
    Int(i64),
    Bytes(Vec<u8>),
    Status(String),
}

impl Value {
    pub fn int(&self) -> Option<i64> {
        match self {
            Self::Int(value) => Some(*value),
            _ => None,
        }
    }

    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Self::Bytes(bytes) => Some(bytes),
            _ => None,
        }
    }
}

/// A Lua script and one call of it.
pub trait Script {
    /// The Lua source (run by its SHA-1, with `EVAL` when Redis lost it).
    const SOURCE: &'static str;
    /// What a reply means.
    type Reply;
    /// `KEYS`, in the order the Lua reads them.
    fn keys(&self) -> Vec<String>;
    /// `ARGV`, in the order the Lua reads them.
    fn args(&self) -> Vec<Arg>;
    /// What the reply (a Lua table read as a list of values) means for this call.
    fn parse(&self, reply: Vec<Value>) -> Self::Reply;
}

/// The integers of a reply, in order (other values skipped).
pub fn integers(reply: &[Value]) -> Vec<i64> {
    reply.iter().filter_map(Value::int).collect()
}

/// The bytes of a reply's `index`-th value (`None` for nil or a non-string).
pub fn bytes_at(reply: &[Value], index: usize) -> Option<&[u8]> {
    reply.get(index).and_then(Value::bytes)
}

/// Every value as bytes (`HGETALL`, `ZRANGE`...; nil is empty).
pub fn all_bytes(reply: Vec<Value>) -> Vec<Vec<u8>> {
    reply
        .into_iter()
        .map(|value| match value {
            Value::Bytes(bytes) => bytes,
            Value::Status(status) => status.into_bytes(),
            Value::Int(int) => int.to_string().into_bytes(),
            Value::Nil => Vec::new(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_keep_their_redis_type() {
        assert_eq!(Arg::from(7u64), Arg::Int(7));
        assert_eq!(Arg::from(u64::MAX), Arg::Int(i64::MAX));
        assert_eq!(Arg::from("a"), Arg::Bytes(b"a".to_vec()));
        assert_eq!(Arg::from(-1i64), Arg::Int(-1));
    }

    #[test]
    fn replies_are_read_by_position_and_type() {
        let reply = vec![Value::Int(2), Value::Bytes(b"x".to_vec()), Value::Nil];
        assert_eq!(integers(&reply), vec![2]);
        assert_eq!(bytes_at(&reply, 1), Some(&b"x"[..]));
        assert_eq!(bytes_at(&reply, 0), None);
        assert_eq!(bytes_at(&reply, 2), None);
        assert_eq!(
            all_bytes(reply),
            vec![b"2".to_vec(), b"x".to_vec(), Vec::new()]
        );
    }
}
