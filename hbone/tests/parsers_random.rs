//! Parsers that face the network, fed random and mutated input: they must never panic, and
//! anything they accept must print back to itself.

use hbone::Identity;
use hbone::tunnel::headers::{forwarded_for, parse_forwarded_for};
use http::HeaderValue;
use rand::{Rng, SeedableRng};

const ALPHABET: &[u8] = b"spiffe:/nsaSA.-_%?#@:0123456789abcxyzXYZ/ \t\"=,;[]";

fn mutate(rng: &mut impl Rng, seed: &str) -> String {
    let mut bytes = seed.as_bytes().to_vec();
    for _ in 0..rng.random_range(0..4) {
        let i = rng.random_range(0..=bytes.len());
        match rng.random_range(0..3) {
            0 if i < bytes.len() => {
                bytes.remove(i);
            }
            1 => bytes.insert(i, ALPHABET[rng.random_range(0..ALPHABET.len())]),
            _ if i < bytes.len() => bytes[i] = ALPHABET[rng.random_range(0..ALPHABET.len())],
            _ => {}
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn identities_never_panic_and_accepted_ones_round_trip() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut accepted = 0;
    for _ in 0..50_000 {
        let input = mutate(&mut rng, "spiffe://cluster.local/ns/default/sa/sleep");
        if let Ok(id) = input.parse::<Identity>() {
            accepted += 1;
            assert_eq!(id.as_str(), input);
            let rebuilt = Identity::new(id.trust_domain(), id.namespace(), id.service_account()).unwrap();
            assert_eq!(rebuilt, id);
        }
    }
    assert!(accepted > 100, "the mutator should keep some inputs valid ({accepted})");
}

#[test]
fn forwarded_headers_never_panic() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let good = forwarded_for("10.1.2.3:4567".parse().unwrap());
    for _ in 0..50_000 {
        let input = mutate(&mut rng, good.to_str().unwrap());
        if let Ok(v) = HeaderValue::from_str(&input)
            && let Some(addr) = parse_forwarded_for(&v)
        {
            assert!(input.contains(&addr.port().to_string()));
        }
    }
}
