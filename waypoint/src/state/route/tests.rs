//! Tests of route compilation and precedence.
