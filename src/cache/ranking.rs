//! Decaying rankings in Redis (top questions, most rate-limited sessions):
//! an event adds `2^((now - base) / half_life)` to its member's score, so an
//! event counts half as much after every half-life, and a capped set never
//! freezes: a newcomer to a full set takes the place of the lowest member and
//! inherits its score (the Space-Saving heavy-hitters rule), so a member asked
//! often enough always gets in. `base` lives in a key of its own and moves
//! forward (every score scaled down with it) before the increments grow large.

use crate::redis::script::{all_bytes, Arg, Script, Value};

/// Half-life of a top question: what was asked in the last hours ranks first.
pub const QUESTIONS_HALF_LIFE_SECONDS: u64 = 6 * 3600;
/// Half-life of a rate-limited session's count.
pub const RATE_LIMITED_HALF_LIFE_SECONDS: u64 = 3600;
/// How many members a ranking keeps.
pub const QUESTIONS_CAP: u64 = 10_000;
pub const RATE_LIMITED_CAP: u64 = 1_000;

/// The key holding a ranking's base time (the same hash tag as the ranking).
pub fn base_key(ranking: &str) -> String {
    format!("{ranking}:base")
}

/// Lua that bumps `member` in the ranking `KEYS[z]` (base in `KEYS[b]`), with
/// `ARGV[h]` the half-life and `ARGV[c]` the cap (indices as string literals).
#[macro_export]
macro_rules! ranking_bump_lua {
    ($z:literal, $b:literal, $member:literal, $h:literal, $c:literal) => {
        concat!(
            "do\n",
            "  local z, b, member = KEYS[",
            $z,
            "], KEYS[",
            $b,
            "], ARGV[",
            $member,
            "]\n",
            "  local half_life, cap = tonumber(ARGV[",
            $h,
            "]), tonumber(ARGV[",
            $c,
            "])\n",
            "  local now = tonumber(redis.call('TIME')[1])\n",
            "  local stored = redis.call('GET', b)\n",
            "  local base = tonumber(stored or now)\n",
            "  local exponent = (now - base) / half_life\n",
            "  if exponent > 64 or exponent < 0 then\n",
            "    local factor = 2 ^ (-exponent)\n",
            "    local all = redis.call('ZRANGE', z, 0, -1, 'WITHSCORES')\n",
            "    for i = 1, #all, 2 do\n",
            "      redis.call('ZADD', z, tonumber(all[i + 1]) * factor, all[i])\n",
            "    end\n",
            "    base, exponent, stored = now, 0, false\n",
            "  end\n",
            // Written only when it changes: most bumps write one key, not two.
            "  if not stored then redis.call('SET', b, base) end\n",
            "  local weight = 2 ^ exponent\n",
            "  if not redis.call('ZSCORE', z, member) and redis.call('ZCARD', z) >= cap then\n",
            "    local lowest = redis.call('ZPOPMIN', z)\n",
            "    weight = weight + tonumber(lowest[2])\n",
            "  end\n",
            "  redis.call('ZINCRBY', z, weight, member)\n",
            "end\n",
        )
    };
}

/// Bumps one member of a ranking.
pub struct Bump<'a> {
    pub ranking: &'a str,
    pub member: &'a str,
    pub half_life_seconds: u64,
    pub cap: u64,
}

impl Script for Bump<'_> {
    const SOURCE: &'static str = ranking_bump_lua!("1", "2", "1", "2", "3");
    type Reply = ();

    /// The ranking, its base.
    fn keys(&self) -> Vec<String> {
        vec![self.ranking.to_string(), base_key(self.ranking)]
    }

    /// The member, the half-life, the cap.
    fn args(&self) -> Vec<Arg> {
        vec![
            Arg::from(self.member),
            Arg::from(self.half_life_seconds),
            Arg::from(self.cap),
        ]
    }

    fn parse(&self, _: Vec<Value>) {}
}

/// The top `count` members of a ranking with their decayed counts as of now.
pub struct Top<'a> {
    pub ranking: &'a str,
    pub count: u64,
    pub half_life_seconds: u64,
}

impl Script for Top<'_> {
    const SOURCE: &'static str = TOP_LUA;
    /// Each member with its count, highest first.
    type Reply = Vec<(String, f64)>;

    /// The ranking, its base.
    fn keys(&self) -> Vec<String> {
        vec![self.ranking.to_string(), base_key(self.ranking)]
    }

    /// How many, the half-life.
    fn args(&self) -> Vec<Arg> {
        vec![Arg::from(self.count), Arg::from(self.half_life_seconds)]
    }

    /// Member and count alternate; the counts are strings, as Lua numbers
    /// would be truncated to integers. A count that does not read is 0.
    fn parse(&self, reply: Vec<Value>) -> Self::Reply {
        let values = all_bytes(reply);
        values
            .chunks_exact(2)
            .map(|pair| {
                let count = std::str::from_utf8(&pair[1])
                    .ok()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0.0);
                (String::from_utf8_lossy(&pair[0]).into_owned(), count)
            })
            .collect()
    }
}

const TOP_LUA: &str = r#"
local now = tonumber(redis.call('TIME')[1])
local base = tonumber(redis.call('GET', KEYS[2]) or now)
local scale = 2 ^ ((now - base) / tonumber(ARGV[2]))
local top = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
local out = {}
for i = 1, #top, 2 do
  out[#out + 1] = top[i]
  out[#out + 1] = string.format('%.3f', tonumber(top[i + 1]) / scale)
end
return out
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_reads_members_and_their_decayed_counts() {
        let top = Top {
            ranking: "r",
            count: 2,
            half_life_seconds: 60,
        };
        let reply = ["a", "2.500", "b", "x"]
            .map(|v| Value::Bytes(v.as_bytes().to_vec()))
            .to_vec();
        assert_eq!(
            top.parse(reply),
            vec![("a".to_string(), 2.5), ("b".to_string(), 0.0)]
        );
    }

    #[test]
    fn the_bump_names_its_keys_and_arguments() {
        let bump = Bump {
            ranking: "r",
            member: "m",
            half_life_seconds: 60,
            cap: 3,
        };
        assert!(Bump::SOURCE.contains("KEYS[1], KEYS[2], ARGV[1]"));
        assert!(Bump::SOURCE.contains("tonumber(ARGV[2]), tonumber(ARGV[3])"));
        assert_eq!(bump.keys(), ["r", "r:base"]);
        assert_eq!(bump.args(), [Arg::from("m"), Arg::Int(60), Arg::Int(3)]);
        assert_eq!(
            base_key("chatbot:analytics:top-questions:{q}"),
            "chatbot:analytics:top-questions:{q}:base"
        );
    }
}
