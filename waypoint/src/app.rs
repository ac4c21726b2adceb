//! Wiring: certificates from the CA, state from xDS, the HBONE listener, admin (config dump,
//! log level) on localhost:15000, metrics on 15020 and readiness on 15021.
