//! Input mutation for the property tests of every decoder that reads what an outsider can
//! write (spool segments, batches, check-in answers, module manifests, HTTP answers): one
//! generator, so every decoder is tried with the same kinds of damage.

use rand::{Rng, RngExt};

/// A damaged copy of `valid`: bits flipped, cut short, bytes inserted or removed, a piece
/// duplicated, or (one case in eight) bytes unrelated to it.
pub fn mutate(rng: &mut impl Rng, valid: &[u8]) -> Vec<u8> {
    let mut v = valid.to_vec();
    match rng.random_range(0..8u8) {
        0 => return (0..rng.random_range(0..256)).map(|_| rng.random()).collect(),
        1 if !v.is_empty() => v.truncate(rng.random_range(0..v.len())),
        2 => {
            for _ in 0..rng.random_range(1..8) {
                let at = rng.random_range(0..=v.len());
                v.insert(at, rng.random());
            }
        }
        3 if !v.is_empty() => {
            for _ in 0..rng.random_range(1..8).min(v.len()) {
                let at = rng.random_range(0..v.len());
                v.remove(at);
            }
        }
        4 if v.len() > 2 => {
            let a = rng.random_range(0..v.len());
            let b = rng.random_range(a..v.len());
            let piece = v[a..b].to_vec();
            let at = rng.random_range(0..=v.len());
            v.splice(at..at, piece);
        }
        _ if !v.is_empty() => {
            for _ in 0..rng.random_range(1..5) {
                let at = rng.random_range(0..v.len());
                v[at] ^= 1 << rng.random_range(0..8);
            }
        }
        _ => {}
    }
    v
}
