//! Tests of L7 authorization.
