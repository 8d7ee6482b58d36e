//! Identifier and password generation for the fake cloud, in the formats the
//! real services use (`br-aged-salad-12345678`, `ep-…`, UUID operations,
//! 14-hex Fly machine ids, ULID-like instance ids), all drawn from one seeded
//! generator so a run with the same seed and the same request order yields
//! the same ids.
//!
//! It also remembers every id it handed out or was told about (`claim`), so
//! no id is handed out twice, even after the thing it named was deleted:
//! real clouds do not reuse ids either.

use std::collections::HashSet;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[rustfmt::skip]
const ADJECTIVES: &[&str] = &[
    "aged", "ancient", "autumn", "billowing", "bitter", "black", "blue", "bold", "broad", "calm",
    "cold", "cool", "crimson", "curly", "damp", "dark", "dawn", "delicate", "divine", "dry",
    "empty", "falling", "fancy", "flat", "floral", "fragrant", "frosty", "gentle", "green",
    "hidden", "holy", "icy", "jolly", "late", "lingering", "little", "lively", "long", "lucky",
    "misty", "morning", "muddy", "mute", "nameless", "noisy", "odd", "old", "orange", "patient",
    "plain", "polished", "proud", "purple", "quiet", "rapid", "red", "restless", "rough", "round",
    "royal", "shiny", "shy", "silent", "small", "snowy", "soft", "solitary", "sparkling", "spring",
    "square", "steep", "still", "summer", "sweet", "throbbing", "tight", "tiny", "twilight",
    "wandering", "weathered", "white", "wild", "winter", "wispy", "withered", "yellow", "young",
];

#[rustfmt::skip]
const NOUNS: &[&str] = &[
    "art", "band", "bar", "base", "bird", "block", "boat", "bonus", "bread", "breeze", "brook",
    "bush", "butterfly", "cake", "cell", "cherry", "cloud", "credit", "darkness", "dawn", "dew",
    "disk", "dream", "dust", "feather", "field", "fire", "firefly", "flower", "fog", "forest",
    "frog", "frost", "glade", "glitter", "grass", "hall", "hat", "haze", "heart", "hill", "king",
    "lab", "lake", "leaf", "limit", "math", "meadow", "mode", "moon", "morning", "mountain",
    "mouse", "mud", "night", "paper", "pine", "poetry", "pond", "queen", "rain", "recipe",
    "resonance", "rice", "river", "salad", "scene", "sea", "shadow", "shape", "silence", "sky",
    "smoke", "snow", "snowflake", "sound", "star", "sun", "sunset", "surf", "term", "thunder",
    "tooth", "tree", "truth", "union", "unit", "violet", "voice", "water", "waterfall", "wave",
    "wildflower", "wind", "wood",
];

const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const CROCKFORD: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// The one seeded source of every id and password the fake hands out.
pub(crate) struct Ids {
    rng: StdRng,
    taken: HashSet<String>,
}

impl Ids {
    pub(crate) fn new(seed: u64) -> Ids {
        Ids {
            rng: StdRng::seed_from_u64(seed),
            taken: HashSet::new(),
        }
    }

    /// Restart the draw from `seed`; ids already taken stay taken.
    pub(crate) fn reseed(&mut self, seed: u64) {
        self.rng = StdRng::seed_from_u64(seed);
    }

    /// Record an id chosen by someone else (bulk registration). False when
    /// it is already in use.
    pub(crate) fn claim(&mut self, id: &str) -> bool {
        self.taken.insert(id.to_owned())
    }

    /// Whether `id` was handed out or claimed already.
    pub(crate) fn is_taken(&self, id: &str) -> bool {
        self.taken.contains(id)
    }

    /// Draw with `draw` until the result is not in use, and take it.
    fn fresh(&mut self, draw: fn(&mut Ids) -> String) -> String {
        loop {
            let id = draw(self);
            if self.taken.insert(id.clone()) {
                return id;
            }
        }
    }

    fn words(&mut self) -> (&'static str, &'static str) {
        let adjective = ADJECTIVES[self.rng.gen_range(0..ADJECTIVES.len())];
        let noun = NOUNS[self.rng.gen_range(0..NOUNS.len())];
        (adjective, noun)
    }

    fn words_and_digits(&mut self) -> String {
        let (a, n) = self.words();
        format!("{a}-{n}-{:08}", self.rng.gen_range(0..100_000_000u32))
    }

    /// `<word>-<word>-<8 digits>`, the shape of a Neon project id.
    pub(crate) fn project(&mut self) -> String {
        self.fresh(Ids::words_and_digits)
    }

    /// `br-<word>-<word>-<8 digits>`.
    pub(crate) fn branch(&mut self) -> String {
        self.fresh(|ids| format!("br-{}", ids.words_and_digits()))
    }

    /// `ep-<word>-<word>-<8 digits>`.
    pub(crate) fn endpoint(&mut self) -> String {
        self.fresh(|ids| format!("ep-{}", ids.words_and_digits()))
    }

    /// A random (version 4 shaped) UUID, as Neon uses for operations.
    pub(crate) fn uuid(&mut self) -> String {
        self.fresh(|ids| {
            let bytes: [u8; 16] = ids.rng.gen();
            uuid::Builder::from_random_bytes(bytes)
                .into_uuid()
                .to_string()
        })
    }

    /// A Neon-style generated role password: `npg_` and 12 alphanumerics.
    pub(crate) fn password(&mut self) -> String {
        let tail: String = (0..12)
            .map(|_| ALPHANUMERIC[self.rng.gen_range(0..ALPHANUMERIC.len())] as char)
            .collect();
        format!("npg_{tail}")
    }

    /// A Fly machine id: 14 lowercase hex digits.
    pub(crate) fn machine(&mut self) -> String {
        self.fresh(|ids| format!("{:014x}", ids.rng.gen_range(0..1u64 << 56)))
    }

    /// A Fly machine version (`instance_id`): 26 Crockford base32 characters,
    /// shaped like a ULID.
    pub(crate) fn instance(&mut self) -> String {
        let bits: u128 = self.rng.gen();
        let tail: String = (0..24)
            .map(|i| CROCKFORD[((bits >> (5 * i)) & 31) as usize] as char)
            .collect();
        format!("01{tail}")
    }

    /// A generated Fly machine name: `adjective-noun-1234`.
    pub(crate) fn machine_name(&mut self) -> String {
        let (a, n) = self.words();
        format!("{a}-{n}-{:04}", self.rng.gen_range(0..10_000u32))
    }

    /// A hex string of `len` digits (image digests, private addresses).
    pub(crate) fn hex(&mut self, len: usize) -> String {
        let mut hex = String::with_capacity(len + 16);
        while hex.len() < len {
            hex.push_str(&format!("{:016x}", self.rng.gen::<u64>()));
        }
        hex.truncate(len);
        hex
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_ids() {
        let mut a = Ids::new(7);
        let mut b = Ids::new(7);
        assert_eq!(a.branch(), b.branch());
        assert_eq!(a.uuid(), b.uuid());
        assert_eq!(a.machine(), b.machine());
    }

    #[test]
    fn ids_have_the_real_shapes() {
        let mut ids = Ids::new(1);
        let branch = ids.branch();
        let parts: Vec<&str> = branch.split('-').collect();
        assert_eq!(parts.len(), 4, "{branch}");
        assert_eq!(parts[0], "br");
        assert_eq!(parts[3].len(), 8);
        assert!(ids.endpoint().starts_with("ep-"));
        assert_eq!(ids.machine().len(), 14);
        assert_eq!(ids.instance().len(), 26);
        assert!(uuid::Uuid::parse_str(&ids.uuid()).is_ok());
        assert_eq!(ids.password().len(), 16);
    }

    #[test]
    fn a_claimed_id_is_never_handed_out() {
        let mut first = Ids::new(3);
        let drawn = first.branch();
        let mut second = Ids::new(3);
        assert!(second.claim(&drawn));
        assert_ne!(second.branch(), drawn);
        assert!(!second.claim(&drawn));
    }
}
