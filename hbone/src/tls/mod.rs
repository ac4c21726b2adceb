//! Mesh TLS: TLS 1.3 only, AES-GCM suites, ALPN `h2`, no SNI, SPIFFE identities on both ends.

mod config;
mod verify;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

pub use config::{client_config, server_config};
pub use verify::{PeerIdentityError, peer_identity};

/// ALPN protocol spoken inside mesh TLS.
pub const ALPN_H2: &[u8] = b"h2";

/// The crypto provider of every mesh TLS context: aws-lc-rs restricted to the AES-GCM TLS 1.3
/// suites. Key exchange keeps the provider's defaults, which prefer hybrid X25519+ML-KEM-768
/// when the peer offers it and fall back to X25519.
pub fn provider() -> &'static Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| {
        use rustls::crypto::aws_lc_rs::{self, cipher_suite};
        let mut p = aws_lc_rs::default_provider();
        p.cipher_suites = vec![cipher_suite::TLS13_AES_128_GCM_SHA256, cipher_suite::TLS13_AES_256_GCM_SHA384];
        Arc::new(p)
    })
}

#[cfg(test)]
mod tests;
