//! The stable-Rust smoke run: every target over its seed corpus, then over a fixed number of
//! deterministic mutations of it. Not a fuzzer (no coverage feedback), but it runs in
//! `cargo test`, repeats exactly, and keeps the target bodies and seeds from rotting.

use std::path::{Path, PathBuf};

use crate::Target;

/// Longest input a mutation may grow to; libFuzzer's default `-max_len` is similar.
const MAX_LEN: usize = 8192;

/// The seed corpus directory of a target: `fuzz/corpus/<name>` at the repository root.
pub fn corpus_dir(target: &Target) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target.name)
}

/// Every file of a seed corpus, sorted by name so that runs repeat.
pub fn seeds(dir: &Path) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.retain(|p| p.is_file());
    paths.sort();
    paths
        .into_iter()
        .map(|p| std::fs::read(&p).map(|data| (p, data)))
        .collect()
}

/// xorshift64*: small, fast, and the same sequence everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Bytes that tend to matter to parsers: boundaries, separators, high and control bytes.
const INTERESTING: &[u8] = &[
    0x00, 0x01, 0x09, 0x0a, 0x0d, 0x20, 0x22, 0x2a, 0x2c, 0x2d, 0x2e, 0x3a, 0x3d, 0x5b, 0x5c, 0x5d,
    0x5f, 0x7f, 0x80, 0xc3, 0xe2, 0xff,
];

/// Applies one to four random edits to `data`: bit flips, byte sets, inserts, deletes,
/// duplicated ranges, a target token, or a splice with another seed.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, tokens: &[&[u8]], others: &[&[u8]]) {
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        let at = |rng: &mut Rng| rng.below(len + 1);
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let i = at(rng);
                data.insert(i, INTERESTING[rng.below(INTERESTING.len())]);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                data.drain(i..i + n);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(32));
                let copy = data[i..i + n].to_vec();
                let j = at(rng);
                data.splice(j..j, copy);
            }
            5 | 6 if !tokens.is_empty() => {
                let token = tokens[rng.below(tokens.len())];
                let i = at(rng);
                data.splice(i..i, token.iter().copied());
            }
            7 if !others.is_empty() => {
                let other = others[rng.below(others.len())];
                let cut = at(rng);
                let from = rng.below(other.len() + 1);
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            8 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(8));
                for b in &mut data[i..i + n] {
                    *b = rng.next_u64() as u8;
                }
            }
            _ => {
                let i = at(rng);
                data.insert(i, rng.next_u64() as u8);
            }
        }
    }
    data.truncate(MAX_LEN);
}

/// The inputs a smoke run feeds a target: the seeds, then `mutations` mutants, each of a seed
/// chosen at random and mutated again from time to time (short chains reach further).
pub fn inputs<'a>(
    seeds: &'a [Vec<u8>],
    tokens: &[&[u8]],
    mutations: usize,
    seed: u64,
) -> impl Iterator<Item = Vec<u8>> + 'a {
    let others: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    let tokens: Vec<Vec<u8>> = tokens.iter().map(|t| t.to_vec()).collect();
    let mut rng = Rng::new(seed);
    let mut current = Vec::new();
    let mutants = (0..mutations).map(move |i| {
        if i % 8 == 0 || others.is_empty() {
            current = others
                .get(rng.below(others.len().max(1)))
                .map_or_else(Vec::new, |s| s.to_vec());
        }
        let tokens: Vec<&[u8]> = tokens.iter().map(Vec::as_slice).collect();
        mutate(&mut rng, &mut current, &tokens, &others);
        current.clone()
    });
    seeds.iter().cloned().chain(mutants)
}
