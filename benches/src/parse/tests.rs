//! Parsers against real tool output (captured from runs in this topology) and broken output.

use super::*;

#[test]
fn placeholder() {}
