//! Generated names: certificates get readable `adjective-noun-12345` names (as Heroku's
//! `mamenchisaurus-65072`), domains get DNS targets like `brave-otter-4gr7rb6h8djkvo9j5zf16mfp`
//! under the configured zone.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

const ADJECTIVES: &[&str] = &[
    "agile",
    "amber",
    "ancient",
    "autumn",
    "bold",
    "brave",
    "bright",
    "calm",
    "clever",
    "cosmic",
    "crimson",
    "curious",
    "dapper",
    "daring",
    "eager",
    "electric",
    "emerald",
    "exemplary",
    "fearless",
    "fierce",
    "gentle",
    "gilded",
    "golden",
    "graceful",
    "happy",
    "hidden",
    "humble",
    "jolly",
    "keen",
    "kind",
    "lively",
    "lucky",
    "lunar",
    "mellow",
    "mighty",
    "misty",
    "nimble",
    "noble",
    "patient",
    "polished",
    "proud",
    "quiet",
    "radiant",
    "rapid",
    "rustic",
    "serene",
    "shiny",
    "silent",
    "silver",
    "sleek",
    "solar",
    "spirited",
    "steady",
    "stellar",
    "stoic",
    "sunny",
    "swift",
    "tidy",
    "tranquil",
    "vast",
    "vivid",
    "warm",
    "wise",
    "zesty",
];

const NOUNS: &[&str] = &[
    "allosaurus",
    "ankylosaurus",
    "badger",
    "beacon",
    "brachiosaurus",
    "canyon",
    "cedar",
    "comet",
    "coral",
    "crane",
    "dolphin",
    "ember",
    "falcon",
    "fjord",
    "gecko",
    "glacier",
    "harbor",
    "heron",
    "iguanodon",
    "juniper",
    "kestrel",
    "lagoon",
    "lantern",
    "lynx",
    "mamenchisaurus",
    "maple",
    "meadow",
    "meteor",
    "nebula",
    "orca",
    "oviraptor",
    "otter",
    "pelican",
    "pine",
    "prairie",
    "quartz",
    "raptor",
    "reef",
    "river",
    "sequoia",
    "sparrow",
    "spruce",
    "stegosaurus",
    "summit",
    "sushi",
    "tapir",
    "thicket",
    "tundra",
    "velociraptor",
    "walrus",
    "willow",
    "wren",
    "yak",
    "zephyr",
];

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // A failing system RNG leaves zeros; names are then still unique-checked by the caller.
    let _ = SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b)
}

fn pick<'a>(list: &[&'a str], r: u64) -> &'a str {
    list[(r % list.len() as u64) as usize]
}

/// `adjective-noun-12345`.
pub fn certificate_name() -> String {
    let r = random_u64();
    format!(
        "{}-{}-{:05}",
        pick(ADJECTIVES, r),
        pick(NOUNS, r >> 16),
        (r >> 32) % 100_000
    )
}

/// `adjective-noun-<22 base36 characters>.<zone>`.
pub fn dns_target(zone: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let r = random_u64();
    let mut tail = String::with_capacity(22);
    let mut bits = [random_u64(), random_u64()];
    for i in 0..22 {
        let word = &mut bits[i % 2];
        tail.push(char::from(ALPHABET[(*word % 36) as usize]));
        *word /= 36;
    }
    format!(
        "{}-{}-{tail}.{zone}",
        pick(ADJECTIVES, r),
        pick(NOUNS, r >> 16)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let n = certificate_name();
        let parts: Vec<&str> = n.split('-').collect();
        assert_eq!(parts.len(), 3, "{n}");
        assert_eq!(parts[2].len(), 5);
        assert!(terminus_route::HostPattern::parse(&dns_target("terminusdns.test")).is_ok());
        assert_ne!(certificate_name(), certificate_name());
    }
}
