//! Decaying rankings in Redis (top questions, most rate-limited sessions):
//! an event adds `2^((now - base) / half_life)` to its member's score, so an
//! event counts half as much after every half-life, and a capped set never
//! freezes: a newcomer to a full set takes the place of the lowest member and
//! inherits its score (the Space-Saving heavy-hitters rule), so a member asked
//! often enough always gets in. `base` lives in a key of its own and moves
//! forward (every score scaled down with it) before the increments grow large.

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

/// Bumps one member. KEYS: ranking, its base. ARGV: member, half-life, cap.
pub const BUMP_SCRIPT: &str = ranking_bump_lua!("1", "2", "1", "2", "3");

/// The top `ARGV[1]` members with their decayed counts as of now (strings,
/// as Lua numbers would be truncated to integers). KEYS: ranking, its base.
/// ARGV: how many, half-life.
pub const TOP_SCRIPT: &str = r#"
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
    fn the_bump_names_its_keys_and_arguments() {
        assert!(BUMP_SCRIPT.contains("KEYS[1], KEYS[2], ARGV[1]"));
        assert!(BUMP_SCRIPT.contains("tonumber(ARGV[2]), tonumber(ARGV[3])"));
        assert_eq!(
            base_key("chatbot:analytics:top-questions:{q}"),
            "chatbot:analytics:top-questions:{q}:base"
        );
    }
}
